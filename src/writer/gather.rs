//! Gathering rows of a buffer (many batches of at most a DuckDB vector each) into sorted order.
//!
//! A buffer holds about a thousand batches per million rows. Arrow's `interleave` looks at every
//! source array on every call (types, null counts, typed views), so gathering a buffer a slice
//! at a time cost O(batches) per column per slice on top of the rows. [`Gather`] takes those
//! views once per buffer: typed value slices for the integer and float columns without nulls,
//! offsets and bytes for the string columns without nulls (the label, the block, the
//! coordinates), and arrow's `interleave` for anything else (attributes with nulls, other types).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, PrimitiveArray, RecordBatch, StringArray,
};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::*;

use crate::error::Result;

/// One column's sources.
enum Source<'a> {
    Int8(Vec<&'a [i8]>),
    Int16(Vec<&'a [i16]>),
    Int32(Vec<&'a [i32]>),
    Int64(Vec<&'a [i64]>),
    UInt8(Vec<&'a [u8]>),
    UInt16(Vec<&'a [u16]>),
    UInt32(Vec<&'a [u32]>),
    UInt64(Vec<&'a [u64]>),
    Float32(Vec<&'a [f32]>),
    Float64(Vec<&'a [f64]>),
    /// (offsets, bytes) of each batch's `Utf8` column.
    Utf8(Vec<(&'a [i32], &'a [u8])>),
    Other(Vec<&'a dyn Array>),
}

/// The batches of a buffer, ready to gather rows from by `(batch, row)` pairs.
pub(super) struct Gather<'a> {
    schema: SchemaRef,
    columns: Vec<Source<'a>>,
}

fn values<'a, T: ArrowPrimitiveType>(cols: &[&'a ArrayRef]) -> Vec<&'a [T::Native]> {
    cols.iter()
        .map(|c| c.as_primitive::<T>().values().as_ref())
        .collect()
}

fn take<T: ArrowPrimitiveType>(src: &[&[T::Native]], pairs: &[(usize, usize)]) -> ArrayRef {
    let v: Vec<T::Native> = pairs.iter().map(|&(b, r)| src[b][r]).collect();
    Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(v), None))
}

impl<'a> Gather<'a> {
    /// Views of `batches` (all of one schema, at least one batch).
    pub(super) fn new(batches: &'a [RecordBatch]) -> Gather<'a> {
        let schema = batches[0].schema();
        let columns = (0..schema.fields().len())
            .map(|i| {
                let cols: Vec<&'a ArrayRef> = batches.iter().map(|b| b.column(i)).collect();
                if cols.iter().any(|c| c.null_count() > 0) {
                    return Source::Other(cols.iter().map(|&c| c.as_ref()).collect());
                }
                match schema.field(i).data_type() {
                    DataType::Int8 => Source::Int8(values::<Int8Type>(&cols)),
                    DataType::Int16 => Source::Int16(values::<Int16Type>(&cols)),
                    DataType::Int32 => Source::Int32(values::<Int32Type>(&cols)),
                    DataType::Int64 => Source::Int64(values::<Int64Type>(&cols)),
                    DataType::UInt8 => Source::UInt8(values::<UInt8Type>(&cols)),
                    DataType::UInt16 => Source::UInt16(values::<UInt16Type>(&cols)),
                    DataType::UInt32 => Source::UInt32(values::<UInt32Type>(&cols)),
                    DataType::UInt64 => Source::UInt64(values::<UInt64Type>(&cols)),
                    DataType::Float32 => Source::Float32(values::<Float32Type>(&cols)),
                    DataType::Float64 => Source::Float64(values::<Float64Type>(&cols)),
                    DataType::Utf8 => Source::Utf8(
                        cols.iter()
                            .map(|c| {
                                let s = c.as_string::<i32>();
                                (s.value_offsets(), s.value_data())
                            })
                            .collect(),
                    ),
                    _ => Source::Other(cols.iter().map(|&c| c.as_ref()).collect()),
                }
            })
            .collect();
        Gather { schema, columns }
    }

    /// The rows `pairs` (`(batch, row)`) in that order, as one batch. String columns must fit
    /// `i32` offsets (the caller cuts slices with `bounded::cut`).
    #[cfg(test)]
    pub(super) fn rows(&self, pairs: &[(usize, usize)]) -> Result<RecordBatch> {
        let columns = (0..self.columns.len())
            .map(|i| self.column(i, pairs))
            .collect::<Result<Vec<ArrayRef>>>()?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// The schema of the batches.
    pub(super) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Column `i` of the rows `pairs`, as in [`Gather::rows`].
    pub(super) fn column(&self, i: usize, pairs: &[(usize, usize)]) -> Result<ArrayRef> {
        Ok(match &self.columns[i] {
            Source::Int8(s) => take::<Int8Type>(s, pairs),
            Source::Int16(s) => take::<Int16Type>(s, pairs),
            Source::Int32(s) => take::<Int32Type>(s, pairs),
            Source::Int64(s) => take::<Int64Type>(s, pairs),
            Source::UInt8(s) => take::<UInt8Type>(s, pairs),
            Source::UInt16(s) => take::<UInt16Type>(s, pairs),
            Source::UInt32(s) => take::<UInt32Type>(s, pairs),
            Source::UInt64(s) => take::<UInt64Type>(s, pairs),
            Source::Float32(s) => take::<Float32Type>(s, pairs),
            Source::Float64(s) => take::<Float64Type>(s, pairs),
            Source::Utf8(s) => strings(s, pairs)?,
            Source::Other(s) => arrow::compute::interleave(s, pairs)?,
        })
    }
}

fn strings(src: &[(&[i32], &[u8])], pairs: &[(usize, usize)]) -> Result<ArrayRef> {
    let bytes: usize = pairs
        .iter()
        .map(|&(b, r)| (src[b].0[r + 1] - src[b].0[r]) as usize)
        .sum();
    let mut offsets: Vec<i32> = Vec::with_capacity(pairs.len() + 1);
    let mut data: Vec<u8> = Vec::with_capacity(bytes);
    offsets.push(0);
    for &(b, r) in pairs {
        let (o, d) = src[b];
        data.extend_from_slice(&d[o[r] as usize..o[r + 1] as usize]);
        offsets.push(data.len() as i32);
    }
    // Whole values copied from valid strings: `try_new` checks it again (cheaply, in one pass).
    Ok(Arc::new(StringArray::try_new(
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Buffer::from_vec(data),
        None,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Int32Array, StringArray, UInt64Array};
    use arrow::datatypes::{Field, Schema};

    fn batch(labels: &[u64], blocks: &[&str], x: &[i32], flag: &[Option<bool>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("label", DataType::UInt64, false),
            Field::new("block", DataType::Utf8, false),
            Field::new("x", DataType::Int32, false),
            Field::new("flag", DataType::Boolean, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(UInt64Array::from(labels.to_vec())),
                Arc::new(StringArray::from(blocks.to_vec())),
                Arc::new(Int32Array::from(x.to_vec())),
                Arc::new(BooleanArray::from(flag.to_vec())),
            ],
        )
        .unwrap()
    }

    /// The same rows as arrow's `interleave_record_batch`, whatever the column kinds: typed
    /// slices (no nulls), strings, and the fallback (a column with nulls); batches that are
    /// slices of larger arrays (non-zero offsets) included.
    #[test]
    fn gathers_what_interleave_gathers() {
        let a = batch(
            &[1, 2, 3],
            &["a", "bb", ""],
            &[10, 20, 30],
            &[Some(true), None, Some(false)],
        );
        let big = batch(
            &[9, 4, 5, 6],
            &["zz", "c", "dddd", "e"],
            &[0, 40, 50, 60],
            &[Some(true), Some(true), Some(false), Some(true)],
        );
        let b = big.slice(1, 3);
        let batches = vec![a, b];
        let pairs = [(1, 2), (0, 0), (1, 0), (0, 2), (0, 1), (1, 1), (1, 0)];
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        let want = arrow::compute::interleave_record_batch(&refs, &pairs).unwrap();
        let got = Gather::new(&batches).rows(&pairs).unwrap();
        assert_eq!(got, want);
        assert_eq!(
            got.column(0).as_primitive::<UInt64Type>().values().to_vec(),
            vec![6, 1, 4, 3, 2, 5, 4]
        );
        assert_eq!(
            got.column(1)
                .as_string::<i32>()
                .iter()
                .flatten()
                .collect::<Vec<_>>(),
            vec!["e", "a", "c", "", "bb", "dddd", "c"]
        );
        // Without nulls: Int32 is typed, a boolean column still goes through interleave.
        let g = Gather::new(&batches[1..]);
        assert!(matches!(g.columns[3], Source::Other(_)));
        assert!(matches!(g.columns[2], Source::Int32(_)));
        let one: Vec<&RecordBatch> = vec![&batches[1]];
        assert_eq!(
            g.rows(&[(0, 2), (0, 0)]).unwrap(),
            arrow::compute::interleave_record_batch(&one, &[(0, 2), (0, 0)]).unwrap()
        );
    }
}
