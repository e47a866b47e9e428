//! Batches bounded by the bytes of their strings.
//!
//! Arrow's `Utf8` arrays address their values with 32-bit offsets: one array holds at most 2 GiB
//! of string data, and concatenating, gathering or decoding more into one array fails (or, in
//! some arrow-rs paths, panics). A store's VARCHAR columns (a VARCHAR block, VARCHAR attributes)
//! can hold any amount of data per label, so every step that builds a batch from several others
//! (COPY's input chunks, the writer's sort, a query's gather, optimize's output) cuts its output
//! where the string bytes would pass [`STRING_BYTES`]. Batches without string columns are never
//! cut by this (the checks read only string columns' offsets).

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use std::sync::Arc;

use crate::error::{Error, Result};

/// String bytes per batch at most (half of what a `Utf8` array can address, so that an
/// estimate off by up to 2x still fits).
pub const STRING_BYTES: usize = 1 << 30;

/// Bytes of one VARCHAR value at most: half of the largest page readers accept
/// ([`crate::footer::MAX_PAGE_BYTES`]), so that a page holding one value and the rest of a
/// write call still passes.
pub const VALUE_BYTES: usize = (crate::footer::MAX_PAGE_BYTES / 2) as usize;

/// Bytes of string data in `b`'s `Utf8` columns (of the slice, not of the shared buffers).
pub fn string_bytes(b: &RecordBatch) -> usize {
    b.columns().iter().map(array_string_bytes).sum()
}

fn array_string_bytes(c: &ArrayRef) -> usize {
    match c.data_type() {
        DataType::Utf8 => {
            let o = c.as_string::<i32>().value_offsets();
            (o[o.len() - 1] - o[0]) as usize
        }
        DataType::LargeUtf8 => {
            let o = c.as_string::<i64>().value_offsets();
            (o[o.len() - 1] - o[0]) as usize
        }
        _ => 0,
    }
}

/// The `Utf8` columns of `b` (indices), empty when it has none.
fn string_columns(b: &RecordBatch) -> Vec<usize> {
    b.columns()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.data_type() == &DataType::Utf8)
        .map(|(i, _)| i)
        .collect()
}

/// Concatenates consecutive `batches` into as few batches as possible, each holding at most
/// `limit` string bytes (a batch over the limit by itself is passed on as it is).
pub fn concat(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    limit: usize,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    let mut run: Vec<RecordBatch> = Vec::new();
    let mut bytes = 0usize;
    let emit = |run: &mut Vec<RecordBatch>, out: &mut Vec<RecordBatch>| -> Result<()> {
        match run.len() {
            0 => {}
            1 => out.extend(run.pop()),
            _ => out.push(arrow::compute::concat_batches(schema, run.iter())?),
        }
        run.clear();
        Ok(())
    };
    for b in batches {
        let s = string_bytes(&b);
        if !run.is_empty() && bytes + s > limit {
            emit(&mut run, &mut out)?;
            bytes = 0;
        }
        bytes += s;
        run.push(b);
    }
    emit(&mut run, &mut out)?;
    Ok(out)
}

/// The end of the next piece of `pairs[from..]` (rows `(batch, row)` of `batches`): at most
/// `max_rows` rows and at most `limit` string bytes (at least one row).
pub fn cut(
    batches: &[&RecordBatch],
    pairs: &[(usize, usize)],
    from: usize,
    max_rows: usize,
    limit: usize,
) -> usize {
    let end = pairs.len().min(from + max_rows);
    let cols = batches
        .first()
        .map(|b| string_columns(b))
        .unwrap_or_default();
    if cols.is_empty() {
        return end;
    }
    let mut bytes = 0usize;
    for (k, &(b, r)) in pairs[from..end].iter().enumerate() {
        let row: usize = cols
            .iter()
            .map(|&c| batches[b].column(c).as_string::<i32>().value_length(r) as usize)
            .sum();
        bytes += row;
        if bytes > limit && k > 0 {
            return from + k;
        }
    }
    end
}

/// Gathers `pairs` (rows `(batch, row)` of `batches`) into batches of at most `max_rows` rows and
/// `limit` string bytes, in order.
pub fn interleave(
    batches: &[&RecordBatch],
    pairs: &[(usize, usize)],
    max_rows: usize,
    limit: usize,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    let mut from = 0;
    while from < pairs.len() {
        let to = cut(batches, pairs, from, max_rows, limit);
        out.push(arrow::compute::interleave_record_batch(
            batches,
            &pairs[from..to],
        )?);
        from = to;
    }
    Ok(out)
}

/// Splits a batch whose string columns may be `LargeUtf8` (built with 64-bit offsets because
/// they hold more than [`STRING_BYTES`]) into batches of `schema` (`Utf8`) of at most `limit`
/// string bytes each. `what` names the input in the error for a single row over 2 GiB.
pub fn split_large(
    b: RecordBatch,
    schema: &SchemaRef,
    what: &str,
    limit: usize,
) -> Result<Vec<RecordBatch>> {
    let large: Vec<usize> = b
        .columns()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.data_type() == &DataType::LargeUtf8)
        .map(|(i, _)| i)
        .collect();
    if large.is_empty() {
        return Ok(vec![b]);
    }
    let row_bytes = |r: usize| -> usize {
        large
            .iter()
            .map(|&c| b.column(c).as_string::<i64>().value_length(r) as usize)
            .sum()
    };
    let mut out = Vec::new();
    let (mut from, mut bytes) = (0usize, 0usize);
    let n = b.num_rows();
    for r in 0..=n {
        let s = if r < n { row_bytes(r) } else { 0 };
        if s > i32::MAX as usize {
            return Err(Error::Data(format!(
                "a row of {what} holds {s} bytes of VARCHAR values; pocaduck stores at most 2 GiB of strings per row"
            )));
        }
        if r == n || (bytes + s > limit && r > from) {
            let cols = b
                .slice(from, r - from)
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| match (c.data_type(), f.data_type()) {
                    // Copied value by value: `cast` refuses a slice of a large array whose
                    // offsets (not rebased by slicing) pass 2 GiB.
                    (DataType::LargeUtf8, DataType::Utf8) => Ok(Arc::new(
                        arrow::array::StringArray::from_iter(c.as_string::<i64>().iter()),
                    ) as ArrayRef),
                    _ => Ok(arrow::compute::cast(c, f.data_type())?),
                })
                .collect::<Result<Vec<ArrayRef>>>()?;
            out.push(RecordBatch::try_new(schema.clone(), cols)?);
            from = r;
            bytes = 0;
        }
        bytes += s;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, LargeStringArray, StringArray};
    use arrow::datatypes::{Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int32, false),
            Field::new("s", DataType::Utf8, false),
        ]))
    }

    fn batch(vals: &[&str], first: i32) -> RecordBatch {
        let i: Vec<i32> = (first..first + vals.len() as i32).collect();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int32Array::from(i)),
                Arc::new(StringArray::from(vals.to_vec())),
            ],
        )
        .unwrap()
    }

    fn ints(bs: &[RecordBatch]) -> Vec<Vec<i32>> {
        bs.iter()
            .map(|b| {
                b.column(0)
                    .as_primitive::<arrow::datatypes::Int32Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[test]
    fn concat_cuts_where_the_string_bytes_pass_the_limit() {
        let bs = vec![
            batch(&["aaaa", "bb"], 0),
            batch(&["cccc"], 2),
            batch(&["d"], 3),
            batch(&["eeeeeeeeee"], 4),
        ];
        let out = concat(&schema(), bs, 8).unwrap();
        // 6 bytes, +4 > 8: cut; 4 + 1; the 10-byte batch alone.
        assert_eq!(ints(&out), vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert!(out
            .iter()
            .all(|b| string_bytes(b) <= 8 || b.num_rows() == 1));
    }

    #[test]
    fn cut_and_interleave_bound_rows_and_bytes() {
        let a = batch(&["xxx", "yyyyy", "z"], 0);
        let b = batch(&["wwwwww", "v"], 10);
        let refs = [&a, &b];
        let pairs = [(1, 0), (0, 0), (0, 2), (1, 1), (0, 1)];
        // 6 | 3 + 1 + 1 = 5 | 5 with a limit of 6 bytes.
        assert_eq!(cut(&refs, &pairs, 0, 100, 6), 1);
        assert_eq!(cut(&refs, &pairs, 1, 100, 6), 4);
        assert_eq!(cut(&refs, &pairs, 4, 100, 6), 5);
        assert_eq!(cut(&refs, &pairs, 0, 2, 1000), 2);
        let out = interleave(&refs, &pairs, 2, 1000).unwrap();
        assert_eq!(ints(&out), vec![vec![10, 0], vec![2, 11], vec![1]]);
        let out = interleave(&refs, &pairs, 100, 6).unwrap();
        assert_eq!(ints(&out), vec![vec![10], vec![0, 2, 11], vec![1]]);
    }

    #[test]
    fn split_large_returns_utf8_batches_in_order() {
        let large = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("i", DataType::Int32, false),
                Field::new("s", DataType::LargeUtf8, false),
            ])),
            vec![
                Arc::new(Int32Array::from(vec![1, 2, 3])),
                Arc::new(LargeStringArray::from(vec!["a", "bc", "def"])),
            ],
        )
        .unwrap();
        let out = split_large(large.clone(), &schema(), "COPY", 1000).unwrap();
        assert_eq!(ints(&out), vec![vec![1, 2, 3]]);
        assert_eq!(out[0].schema(), schema());
        assert_eq!(out[0].column(1).as_string::<i32>().value(2), "def");
        // 1 + 2 > 2: cut; "def" alone.
        let out = split_large(large, &schema(), "COPY", 2).unwrap();
        assert_eq!(ints(&out), vec![vec![1], vec![2], vec![3]]);
        assert_eq!(out[2].column(1).as_string::<i32>().value(0), "def");
    }
}
