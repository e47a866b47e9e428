//! `pocaduck_points(store, label | [labels] [, bbox := …])` and
//! `pocaduck_points_in_box(store, bbox)`: the points of labels, streamed (see
//! [`crate::reader::PointStream`]), with DuckDB's projection pushdown.

use duckdb::core::LogicalTypeId;

use super::args::{arg_labels, bbox_value};
use super::vtab::{Bind, Pieces, StoreArg, TableFn};
use crate::error::{Error, Result};
use crate::reader::{self, BBox, ScanRequest};
use crate::schema::{col, FIXED};

/// `pocaduck_points(store, label [, bbox := …])`: every point of a label (or list of labels).
pub struct Points;

/// `pocaduck_points_in_box(store, bbox)`: every point of every label inside a box.
pub struct PointsInBox;

/// Bind data of `pocaduck_points` and `pocaduck_points_in_box`.
pub struct PointsArgs {
    store: StoreArg,
    /// `None`: every label.
    labels: Option<Vec<u64>>,
    bbox: Option<BBox>,
    /// Part-file column of each result column.
    part_cols: Vec<usize>,
}

/// Shared bind: result columns `[label,] x, y, z, attributes…, block`.
fn bind_points(
    b: &Bind,
    labels: Option<Vec<u64>>,
    with_label: bool,
    bbox: Option<BBox>,
) -> Result<PointsArgs> {
    let store = b.store()?;
    let index = store.bind_index()?;
    let mut part_cols = Vec::new();
    if with_label {
        b.columns(&[(FIXED[col::LABEL], LogicalTypeId::UBigint)]);
        part_cols.push(col::LABEL);
    }
    let rest = (col::XYZ[0]..index.schema.part_columns()).chain([col::BLOCK]);
    for i in rest {
        let c = index.schema.column(i);
        b.arrow_column(&c.name, &c.ty.arrow())?;
        part_cols.push(i);
    }
    Ok(PointsArgs {
        store,
        labels,
        bbox,
        part_cols,
    })
}

impl Pieces for reader::SharedPoints {
    fn next_piece(&self) -> Option<Result<Vec<arrow::array::RecordBatch>>> {
        self.next_window()
    }
}

/// The rows as windows that DuckDB's threads decode in parallel: one thread per
/// [`reader::WINDOW_ROWS`] rows to read (a small label: one thread).
fn shared_points(args: &PointsArgs, columns: &[usize]) -> Result<Option<(Box<dyn Pieces>, u64)>> {
    let s = open_stream(args, columns)?;
    let threads = s.rows_left().div_ceil(reader::WINDOW_ROWS).max(1);
    Ok(Some((Box::new(s.shared()), threads)))
}

fn open_stream(args: &PointsArgs, columns: &[usize]) -> Result<reader::PointStream> {
    let wanted: Vec<usize> = columns
        .iter()
        .filter_map(|i| args.part_cols.get(*i).copied())
        .collect();
    let index = args.store.index()?;
    let req = match &args.labels {
        Some(ls) => ScanRequest::labels(ls.clone()),
        None => ScanRequest::all(),
    };
    req.bbox(args.bbox).columns(wanted).stream(&index)
}

impl TableFn for Points {
    const NAME: &'static str = "pocaduck_points";
    const PARAMETERS: &'static [&'static str] = &["label"];
    const NAMED: &'static [&'static str] = &["bbox", "generation"];
    const PROJECTION: bool = true;
    type Args = PointsArgs;

    fn bind(b: &Bind) -> Result<PointsArgs> {
        let (labels, with_label) = arg_labels(b.param(1), "label")?;
        let bbox = match b.named("bbox") {
            Some(v) => Some(bbox_value(&v, "bbox")?),
            None => None,
        };
        bind_points(b, Some(labels), with_label, bbox)
    }

    fn pieces(args: &PointsArgs, columns: &[usize]) -> Result<Option<(Box<dyn Pieces>, u64)>> {
        shared_points(args, columns)
    }
}

impl TableFn for PointsInBox {
    const NAME: &'static str = "pocaduck_points_in_box";
    const PARAMETERS: &'static [&'static str] = &["bbox"];
    const NAMED: &'static [&'static str] = &["generation"];
    const PROJECTION: bool = true;
    type Args = PointsArgs;

    fn bind(b: &Bind) -> Result<PointsArgs> {
        let v = b.param(1);
        if v.is_null() {
            return Err(Error::arg("bbox", "must not be NULL"));
        }
        let bbox = bbox_value(&v, "bbox")?;
        bind_points(b, None, true, Some(bbox))
    }

    fn pieces(args: &PointsArgs, columns: &[usize]) -> Result<Option<(Box<dyn Pieces>, u64)>> {
        shared_points(args, columns)
    }
}
