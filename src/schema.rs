//! The store schema and the validation of incoming rows.
//!
//! Rows arrive positionally: `label, block, x, y, z, attribute…`. [`normalize`] turns such a batch
//! into the store's Arrow schema (label `UInt64`, block `Utf8` or `Int64`, coordinates and attributes
//! in their own types), refusing — never clamping — anything that does not fit: NULL or negative
//! labels, NULL coordinates, values that would change when converted to the store's types.
//!
//! The first write to a store fixes its schema in `_pocaduck.json`; later writes must conform.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt64Array};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Version of the on-disk format written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// Names of the fixed leading columns, at the positions given by [`col`].
pub const FIXED: [&str; 5] = ["label", "block", "x", "y", "z"];

/// The column layout of part files and of rows as they arrive (`COPY`, `pocaduck_write`):
/// `label, block, x, y, z, attribute…`. The one place that knows it: code names these
/// positions, never the numbers. ([`StoreSchema::columns`] is the same list without `label`:
/// use [`StoreSchema::column`] to look a position up there.)
pub mod col {
    /// `label` (UBIGINT).
    pub const LABEL: usize = 0;
    /// `block` (VARCHAR or BIGINT).
    pub const BLOCK: usize = 1;
    /// `x`, `y`, `z`, in that order.
    pub const XYZ: [usize; 3] = [2, 3, 4];
    /// The first attribute; also the number of fixed columns.
    pub const ATTRIBUTES: usize = 5;
}

/// A column type pocaduck can store, spelled as DuckDB spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum ColumnType {
    Tinyint,
    Smallint,
    Integer,
    Bigint,
    Utinyint,
    Usmallint,
    Uinteger,
    Ubigint,
    Float,
    Double,
    Varchar,
}

impl ColumnType {
    /// The Arrow type used in part files.
    pub fn arrow(self) -> DataType {
        use ColumnType::*;
        match self {
            Tinyint => DataType::Int8,
            Smallint => DataType::Int16,
            Integer => DataType::Int32,
            Bigint => DataType::Int64,
            Utinyint => DataType::UInt8,
            Usmallint => DataType::UInt16,
            Uinteger => DataType::UInt32,
            Ubigint => DataType::UInt64,
            Float => DataType::Float32,
            Double => DataType::Float64,
            Varchar => DataType::Utf8,
        }
    }

    /// The type for an Arrow type, if pocaduck can store it.
    pub fn from_arrow(dt: &DataType) -> Option<ColumnType> {
        use ColumnType::*;
        Some(match dt {
            DataType::Int8 => Tinyint,
            DataType::Int16 => Smallint,
            DataType::Int32 => Integer,
            DataType::Int64 => Bigint,
            DataType::UInt8 => Utinyint,
            DataType::UInt16 => Usmallint,
            DataType::UInt32 => Uinteger,
            DataType::UInt64 => Ubigint,
            DataType::Float32 => Float,
            DataType::Float64 => Double,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Varchar,
            _ => return None,
        })
    }

    /// The DuckDB name of the type.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn is_integer(self) -> bool {
        !matches!(
            self,
            ColumnType::Float | ColumnType::Double | ColumnType::Varchar
        )
    }
}

/// One stored column after `label`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Column name (`block`, `x`, `y`, `z`, then attribute names).
    pub name: String,
    /// Stored type.
    #[serde(rename = "type")]
    pub ty: ColumnType,
}

/// The schema of a store: every column after `label`, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSchema {
    /// On-disk format version.
    pub format: u32,
    /// `block`, `x`, `y`, `z`, then the attributes.
    pub columns: Vec<ColumnDef>,
}

impl StoreSchema {
    /// Arrow schema of part files: `label` then [`StoreSchema::columns`].
    pub fn arrow(&self) -> SchemaRef {
        let mut fields = vec![Field::new(FIXED[col::LABEL], DataType::UInt64, false)];
        for i in col::BLOCK..self.part_columns() {
            let c = self.column(i);
            // block, x, y, z are never NULL; attributes may be.
            fields.push(Field::new(&c.name, c.ty.arrow(), i >= col::ATTRIBUTES));
        }
        Arc::new(Schema::new(fields))
    }

    /// The number of part-file columns (`label` included).
    pub fn part_columns(&self) -> usize {
        self.columns.len() + 1
    }

    /// The definition of part-file column `i` (a position of [`col`], at least [`col::BLOCK`]:
    /// `label` is implied).
    pub fn column(&self, i: usize) -> &ColumnDef {
        &self.columns[i - 1]
    }

    /// The block column's type.
    pub fn block_type(&self) -> ColumnType {
        self.column(col::BLOCK).ty
    }

    /// Attribute names, in order.
    pub fn attributes(&self) -> impl Iterator<Item = &ColumnDef> {
        self.columns.iter().skip(col::ATTRIBUTES - 1)
    }

    /// Parses `_pocaduck.json`.
    pub fn from_json(bytes: &[u8]) -> std::result::Result<StoreSchema, String> {
        let s: StoreSchema = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if s.format != FORMAT_VERSION {
            return Err(format!(
                "format version {} is not supported by this pocaduck (supports {FORMAT_VERSION})",
                s.format
            ));
        }
        if s.part_columns() < col::ATTRIBUTES
            || (col::BLOCK..col::ATTRIBUTES)
                .map(|i| s.column(i).name.as_str())
                .ne(FIXED[col::BLOCK..].iter().copied())
        {
            return Err("columns must start with block, x, y, z".into());
        }
        Ok(s)
    }

    /// Serializes to `_pocaduck.json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Validates attribute names given by the user: identifiers, unique, not a fixed name.
pub fn check_attribute_names(names: &[String], arg: &str) -> Result<()> {
    for (i, n) in names.iter().enumerate() {
        let ok = !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(Error::arg(
                arg,
                format!("has invalid attribute name '{n}': names are 1-64 characters of [A-Za-z0-9_], not starting with a digit"),
            ));
        }
        if FIXED.contains(&n.to_ascii_lowercase().as_str()) {
            return Err(Error::arg(
                arg,
                format!("has attribute name '{n}', which is reserved"),
            ));
        }
        if names[..i].iter().any(|m| m.eq_ignore_ascii_case(n)) {
            return Err(Error::arg(arg, format!("names attribute '{n}' twice")));
        }
    }
    Ok(())
}

/// Derives the schema a first write creates from the incoming column types.
///
/// `types` are the Arrow types of `label, block, x, y, z, attr…`.
pub fn schema_for_input(types: &[DataType], attr_names: &[String]) -> Result<StoreSchema> {
    check_shape(types.len(), attr_names)?;
    let mut columns = Vec::with_capacity(types.len() - 1);
    for (i, dt) in types.iter().enumerate().skip(col::BLOCK) {
        let name = if i < col::ATTRIBUTES {
            FIXED[i].to_string()
        } else {
            attr_names[i - col::ATTRIBUTES].clone()
        };
        let ty = ColumnType::from_arrow(dt).ok_or_else(|| {
            Error::arg(&name, format!("has type {dt}, which pocaduck cannot store"))
        })?;
        let ty = if i == col::BLOCK {
            if ty == ColumnType::Varchar {
                ty
            } else {
                ColumnType::Bigint
            }
        } else if i < col::ATTRIBUTES && ty == ColumnType::Varchar {
            return Err(Error::arg(
                &name,
                "must be a number (integer or float), not VARCHAR",
            ));
        } else {
            ty
        };
        columns.push(ColumnDef { name, ty });
    }
    Ok(StoreSchema {
        format: FORMAT_VERSION,
        columns,
    })
}

fn check_shape(ncols: usize, attr_names: &[String]) -> Result<()> {
    if ncols < col::ATTRIBUTES {
        return Err(Error::arg(
            "columns",
            format!("must be label, block, x, y, z [, attributes…]: got {ncols} column(s)"),
        ));
    }
    if ncols - col::ATTRIBUTES != attr_names.len() {
        return Err(Error::arg(
            "ATTRIBUTES",
            format!(
                "names {} attribute(s) but the rows have {} column(s) after label, block, x, y, z",
                attr_names.len(),
                ncols - col::ATTRIBUTES
            ),
        ));
    }
    Ok(())
}

/// Converts a positional input batch to the store schema, refusing bad values. `first_row` is the
/// input row number of the batch's first row (for error messages).
pub fn normalize(batch: &RecordBatch, schema: &StoreSchema, first_row: u64) -> Result<RecordBatch> {
    let attr_names: Vec<String> = schema.attributes().map(|c| c.name.clone()).collect();
    check_shape(batch.num_columns(), &attr_names)?;
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    cols.push(normalize_label(batch.column(col::LABEL), first_row)?);
    for i in col::BLOCK..schema.part_columns() {
        let (def, column) = (schema.column(i), batch.column(i));
        if i < col::ATTRIBUTES && column.null_count() > 0 {
            let row =
                first_row + (0..column.len()).find(|&r| column.is_null(r)).unwrap_or(0) as u64;
            return Err(Error::Data(format!(
                "column '{}' must not be NULL (row {row} of the input)",
                def.name
            )));
        }
        cols.push(conform(column, def)?);
    }
    Ok(RecordBatch::try_new(schema.arrow(), cols)?)
}

fn normalize_label(col: &ArrayRef, first_row: u64) -> Result<ArrayRef> {
    if col.null_count() > 0 {
        let row = first_row + (0..col.len()).find(|&r| col.is_null(r)).unwrap_or(0) as u64;
        return Err(Error::Data(format!(
            "column 'label' must not be NULL (row {row} of the input)"
        )));
    }
    let ty = ColumnType::from_arrow(col.data_type());
    if !ty.is_some_and(ColumnType::is_integer) {
        return Err(Error::arg(
            "label",
            format!("must be an integer (UBIGINT), got {}", col.data_type()),
        ));
    }
    if let Some(neg) = first_negative(col) {
        return Err(Error::Data(format!(
            "column 'label' must not be negative: found {neg}"
        )));
    }
    Ok(cast_with_options(
        col,
        &DataType::UInt64,
        &CastOptions {
            safe: false,
            ..Default::default()
        },
    )?)
}

/// Returns the first negative value of a signed integer array, as text.
fn first_negative(col: &ArrayRef) -> Option<String> {
    // Unsigned labels (the common case) cannot be negative: no conversion on the hot path.
    if matches!(
        col.data_type(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64
    ) {
        return None;
    }
    let as64 = cast_with_options(
        col,
        &DataType::Int64,
        &CastOptions {
            safe: true,
            ..Default::default()
        },
    )
    .ok()?;
    let a = as64.as_any().downcast_ref::<arrow::array::Int64Array>()?;
    a.values().iter().find(|v| **v < 0).map(|v| v.to_string())
}

/// Converts `col` to the type of `def`, failing if any value would change.
fn conform(col: &ArrayRef, def: &ColumnDef) -> Result<ArrayRef> {
    let target = def.ty.arrow();
    if col.data_type() == &target {
        return Ok(col.clone());
    }
    let src = ColumnType::from_arrow(col.data_type());
    let mismatch = || {
        Error::Data(format!(
            "column '{}' has type {} but the store holds {}",
            def.name,
            src.map(ColumnType::name)
                .unwrap_or_else(|| col.data_type().to_string()),
            def.ty.name()
        ))
    };
    let Some(src) = src else {
        return Err(mismatch());
    };
    if (src == ColumnType::Varchar) != (def.ty == ColumnType::Varchar) {
        return Err(mismatch());
    }
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let out = cast_with_options(col, &target, &strict).map_err(|_| {
        Error::Data(format!(
            "column '{}': a {} value does not fit the store's type {}",
            def.name,
            src.name(),
            def.ty.name()
        ))
    })?;
    let back = cast_with_options(&out, col.data_type(), &strict).map_err(|_| mismatch())?;
    if !same_values(col, &back)? {
        return Err(Error::Data(format!(
            "column '{}': converting {} to the store's type {} would change values (no silent truncation)",
            def.name,
            src.name(),
            def.ty.name()
        )));
    }
    Ok(out)
}

/// Whether `a` and `b` (same type, same nulls) hold equal values. Floats compare as numbers,
/// so -0.0 equals 0.0 (it converts to the integer 0 and back to 0.0, losing nothing).
fn same_values(a: &ArrayRef, b: &ArrayRef) -> Result<bool> {
    if !matches!(a.data_type(), DataType::Float32 | DataType::Float64) {
        return Ok(a.as_ref() == b.as_ref());
    }
    use arrow::array::AsArray;
    let a64 = arrow::compute::cast(a, &DataType::Float64)?;
    let b64 = arrow::compute::cast(b, &DataType::Float64)?;
    let (av, bv) = (
        a64.as_primitive::<arrow::datatypes::Float64Type>(),
        b64.as_primitive::<arrow::datatypes::Float64Type>(),
    );
    Ok(a.len() == b.len()
        && (0..a.len())
            .all(|i| a.is_null(i) == b.is_null(i) && (a.is_null(i) || av.value(i) == bv.value(i))))
}

/// A one-column helper used by tests and by the writer: the label column as `UInt64Array`.
pub fn labels(batch: &RecordBatch) -> &UInt64Array {
    batch
        .column(col::LABEL)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .expect("normalized batches have UInt64 labels")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int32Array, Int64Array, StringArray};

    fn batch(cols: Vec<ArrayRef>) -> RecordBatch {
        RecordBatch::try_from_iter(
            cols.into_iter()
                .enumerate()
                .map(|(i, c)| (format!("c{i}"), c)),
        )
        .unwrap()
    }

    fn ints(v: &[i64]) -> ArrayRef {
        Arc::new(Int64Array::from(v.to_vec()))
    }

    #[test]
    fn first_write_fixes_schema_and_block_integers_become_bigint() {
        let types = [
            DataType::UInt64,
            DataType::Int32,
            DataType::Int32,
            DataType::Int32,
            DataType::Int32,
            DataType::UInt32,
        ];
        let s = schema_for_input(&types, &["sv".into()]).unwrap();
        let names: Vec<_> = s.columns.iter().map(|c| (c.name.as_str(), c.ty)).collect();
        assert_eq!(
            names,
            vec![
                ("block", ColumnType::Bigint),
                ("x", ColumnType::Integer),
                ("y", ColumnType::Integer),
                ("z", ColumnType::Integer),
                ("sv", ColumnType::Uinteger)
            ]
        );
        let round = StoreSchema::from_json(s.to_json().as_bytes()).unwrap();
        assert_eq!(round, s);
    }

    #[test]
    fn negative_and_null_labels_are_refused() {
        let s = schema_for_input(&[const { DataType::Int64 }; 5], &[]).unwrap();
        let b = batch(vec![
            ints(&[1, -3]),
            ints(&[0, 0]),
            ints(&[1, 2]),
            ints(&[1, 2]),
            ints(&[1, 2]),
        ]);
        assert_eq!(
            normalize(&b, &s, 0).unwrap_err().to_string(),
            "column 'label' must not be negative: found -3"
        );
        let nl: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None]));
        let b = batch(vec![
            nl,
            ints(&[0, 0]),
            ints(&[1, 2]),
            ints(&[1, 2]),
            ints(&[1, 2]),
        ]);
        assert_eq!(
            normalize(&b, &s, 0).unwrap_err().to_string(),
            "column 'label' must not be NULL (row 1 of the input)"
        );
    }

    #[test]
    fn null_coordinate_is_refused_with_column_name() {
        let s = schema_for_input(&[const { DataType::Int64 }; 5], &[]).unwrap();
        let ny: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None]));
        let b = batch(vec![
            ints(&[1, 2]),
            ints(&[0, 0]),
            ints(&[1, 2]),
            ny,
            ints(&[1, 2]),
        ]);
        assert_eq!(
            normalize(&b, &s, 0).unwrap_err().to_string(),
            "column 'y' must not be NULL (row 1 of the input)"
        );
    }

    #[test]
    fn float_into_integer_store_is_refused_not_truncated() {
        let s = schema_for_input(&[const { DataType::Int64 }; 5], &[]).unwrap();
        let fx: ArrayRef = Arc::new(Float64Array::from(vec![1.5, 2.0]));
        let b = batch(vec![
            ints(&[1, 2]),
            ints(&[0, 0]),
            fx,
            ints(&[1, 2]),
            ints(&[1, 2]),
        ]);
        let e = normalize(&b, &s, 0).unwrap_err().to_string();
        assert!(
            e.contains("column 'x'") && e.contains("would change values"),
            "{e}"
        );
        // Whole-valued floats convert exactly and are accepted; -0.0 is the integer 0.
        let fx: ArrayRef = Arc::new(Float64Array::from(vec![-0.0, 2.0]));
        let b = batch(vec![
            ints(&[1, 2]),
            ints(&[0, 0]),
            fx,
            ints(&[1, 2]),
            ints(&[1, 2]),
        ]);
        assert!(normalize(&b, &s, 0).is_ok());
    }

    #[test]
    fn narrower_store_refuses_overflowing_values() {
        let s = schema_for_input(
            &[
                DataType::Int64,
                DataType::Int64,
                DataType::Int32,
                DataType::Int32,
                DataType::Int32,
            ],
            &[],
        )
        .unwrap();
        let b = batch(vec![
            ints(&[1]),
            ints(&[0]),
            ints(&[1 << 40]),
            ints(&[1]),
            ints(&[1]),
        ]);
        let e = normalize(&b, &s, 0).unwrap_err().to_string();
        assert!(e.contains("does not fit"), "{e}");
        let b = batch(vec![
            ints(&[1]),
            ints(&[0]),
            ints(&[7]),
            ints(&[1]),
            ints(&[1]),
        ]);
        let out = normalize(&b, &s, 0).unwrap();
        assert_eq!(
            out.column(2)
                .as_any()
                .downcast_ref::<Int32Array>()
                .unwrap()
                .value(0),
            7
        );
    }

    #[test]
    fn varchar_block_into_integer_block_store_is_refused() {
        let s = schema_for_input(&[const { DataType::Int64 }; 5], &[]).unwrap();
        let blk: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        let b = batch(vec![ints(&[1]), blk, ints(&[1]), ints(&[1]), ints(&[1])]);
        assert_eq!(
            normalize(&b, &s, 0).unwrap_err().to_string(),
            "column 'block' has type VARCHAR but the store holds BIGINT"
        );
    }

    #[test]
    fn attribute_names_are_checked() {
        assert!(check_attribute_names(&["sv".into(), "score_2".into()], "ATTRIBUTES").is_ok());
        let e = check_attribute_names(&["x".into()], "ATTRIBUTES")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "argument 'ATTRIBUTES' has attribute name 'x', which is reserved"
        );
        assert!(check_attribute_names(&["a b".into()], "ATTRIBUTES").is_err());
        assert!(check_attribute_names(&["a".into(), "A".into()], "ATTRIBUTES").is_err());
    }

    #[test]
    fn attribute_count_must_match_names() {
        let e = schema_for_input(&[const { DataType::Int64 }; 6], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("argument 'ATTRIBUTES' names 0 attribute(s)"),
            "{e}"
        );
        let e = schema_for_input(&[const { DataType::Int64 }; 3], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("argument 'columns' must be label, block, x, y, z"),
            "{e}"
        );
    }
}
