//! SQL argument values: checked and converted into core types, with errors that name the argument
//! and show the value found (`argument 'label' must not be negative, got -1`). Nothing here
//! clamps or defaults a bad value.

use duckdb::core::LogicalTypeId;
use duckdb::vtab::Value;

use crate::error::{Error, Result};
use crate::reader::BBox;

/// A value for an error message. `Value`'s own `Display` must not be used on a NULL: DuckDB throws
/// a C++ exception there, which aborts the process when it unwinds into Rust.
pub fn shown(v: &Value) -> String {
    if v.is_null() {
        "NULL".to_string()
    } else {
        v.to_string()
    }
}

/// Describes a value's type for error messages.
fn type_name(v: &Value) -> String {
    format!("{:?}", v.logical_type_id()).to_uppercase()
}

/// A non-NULL VARCHAR argument.
pub fn arg_string(v: Option<Value>, arg: &str) -> Result<String> {
    let v = v.ok_or_else(|| Error::arg(arg, "is required"))?;
    if v.is_null() {
        return Err(Error::arg(arg, "must not be NULL"));
    }
    if v.logical_type_id() != LogicalTypeId::Varchar {
        return Err(Error::arg(
            arg,
            format!("must be VARCHAR, got {} {}", type_name(&v), shown(&v)),
        ));
    }
    let s = v.to_string();
    if s.contains('\0') {
        return Err(Error::arg(arg, "must not contain a NUL character"));
    }
    Ok(s)
}

/// Whether a DuckDB type is an integer type (of any width or sign).
pub fn is_integer(t: LogicalTypeId) -> bool {
    use LogicalTypeId::*;
    matches!(
        t,
        Tinyint
            | Smallint
            | Integer
            | Bigint
            | UTinyint
            | USmallint
            | UInteger
            | UBigint
            | Hugeint
            | UHugeint
            | IntegerLiteral
    )
}

/// A label: a non-NULL, non-negative integer of at most 64 bits.
pub fn value_label(v: &Value, arg: &str) -> Result<u64> {
    if v.is_null() {
        return Err(Error::arg(arg, "must not be NULL"));
    }
    if !is_integer(v.logical_type_id()) {
        return Err(Error::arg(
            arg,
            format!(
                "must be an integer (UBIGINT), got {} {}",
                type_name(v),
                shown(v)
            ),
        ));
    }
    let s = v.to_string();
    let n: i128 = s
        .parse()
        .map_err(|_| Error::arg(arg, format!("must be an integer (UBIGINT), got {s}")))?;
    if n < 0 {
        return Err(Error::arg(arg, format!("must not be negative, got {n}")));
    }
    u64::try_from(n).map_err(|_| {
        Error::arg(
            arg,
            format!("must fit UBIGINT (at most 18446744073709551615), got {n}"),
        )
    })
}

/// A label argument that may also be a LIST of labels. Returns the labels and whether a list was given.
pub fn arg_labels(v: Value, arg: &str) -> Result<(Vec<u64>, bool)> {
    if v.logical_type_id() == LogicalTypeId::List && !v.is_null() {
        let items = v.to_list().unwrap_or_default();
        let labels = items
            .iter()
            .map(|x| value_label(x, arg))
            .collect::<Result<Vec<_>>>()?;
        return Ok((labels, true));
    }
    Ok((vec![value_label(&v, arg)?], false))
}

/// Attribute names: a LIST of names, or one comma-separated VARCHAR (`''` for none), checked.
pub fn attribute_names(v: &Value, arg: &str) -> Result<Vec<String>> {
    if v.is_null() {
        return Err(Error::arg(arg, "must not be NULL"));
    }
    let names: Vec<String> = match v.logical_type_id() {
        LogicalTypeId::List => v
            .to_list()
            .unwrap_or_default()
            .iter()
            .map(|x| {
                if x.is_null() {
                    Err(Error::arg(arg, "must not contain NULL"))
                } else {
                    Ok(x.to_string())
                }
            })
            .collect::<Result<_>>()?,
        LogicalTypeId::Varchar => {
            let s = v.to_string();
            if s.trim().is_empty() {
                vec![]
            } else {
                s.split(',').map(|x| x.trim().to_string()).collect()
            }
        }
        _ => {
            return Err(Error::arg(
                arg,
                format!(
                    "must be a list of names or a comma-separated VARCHAR, got {}",
                    shown(v)
                ),
            ))
        }
    };
    crate::schema::check_attribute_names(&names, arg)?;
    Ok(names)
}

/// A byte size: an integer, or a string such as `'64MB'`, `'1GiB'`, `'65536'`.
pub fn parse_size(v: &Value, arg: &str) -> Result<u64> {
    if v.is_null() {
        return Err(Error::arg(arg, "must not be NULL"));
    }
    let t = v.logical_type_id();
    if is_integer(t) {
        let n: i128 = v
            .to_string()
            .parse()
            .map_err(|_| Error::arg(arg, format!("must be a size, got {}", shown(v))))?;
        return u64::try_from(n)
            .map_err(|_| Error::arg(arg, format!("must be a positive size in bytes, got {n}")));
    }
    if t == LogicalTypeId::Varchar {
        return parse_size_str(&v.to_string()).map_err(|m| Error::arg(arg, m));
    }
    Err(Error::arg(
        arg,
        format!(
            "must be a size in bytes (integer or a string like '64MB'), got {} {}",
            type_name(v),
            shown(v)
        ),
    ))
}

/// Parses `'64MB'`, `'1 GiB'`, `'4096'`.
pub fn parse_size_str(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        if !num.is_empty() {
            format!("is too large: '{s}'")
        } else {
            format!("must be a size like '64MB', got '{s}'")
        }
    })?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1000,
        "KIB" => 1 << 10,
        "MB" => 1000 * 1000,
        "MIB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "GIB" => 1 << 30,
        _ => {
            return Err(format!(
                "has an unknown unit in '{s}' (use B, KB, KiB, MB, MiB, GB or GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("is too large: '{s}'"))
}

/// Parses a duration: `'auto'` (`None`), a number of seconds (`'0'`, `'2.5'`), a number with a
/// unit (`'500ms'`, `'5 s'`, `'2 minutes'`, `'1 hour'`), or DuckDB's text of an `INTERVAL`
/// (`'00:00:05'`, `'00:01:30.5'`).
pub fn parse_duration_str(s: &str) -> std::result::Result<Option<std::time::Duration>, String> {
    let t = s.trim().to_ascii_lowercase();
    if t == "auto" || t.is_empty() {
        return Ok(None);
    }
    let bad = || format!("must be a duration like '1s', '500ms', '2 minutes' or 'auto', got '{s}'");
    if t.contains('-') {
        return Err(bad());
    }
    // `[<n> <unit>] [hh:mm:ss]`: DuckDB shows `INTERVAL 1 DAY + 1 HOUR` as '1 day 01:00:00'.
    let (units, clock) = match t.rfind(' ') {
        Some(i) if t[i + 1..].contains(':') => (t[..i].trim(), &t[i + 1..]),
        _ if t.contains(':') => ("", t.as_str()),
        _ => (t.as_str(), ""),
    };
    let mut secs = 0.0f64;
    if !clock.is_empty() {
        let num = |x: &str| x.parse::<f64>().ok().filter(|v| v.is_finite());
        let parts: Vec<Option<f64>> = clock.split(':').map(num).collect();
        match parts[..] {
            [Some(h), Some(m), Some(sec)] => secs += h * 3600.0 + m * 60.0 + sec,
            _ => return Err(bad()),
        }
    }
    // Groups of `<n><unit>` or `<n> <unit>`: DuckDB shows `INTERVAL '1 year 2 months 3 days'`
    // as such; a month counts 30 days and a year 365 (DuckDB's `epoch` of an interval).
    let mut rest = units;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(split);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let after = after.trim_start();
        let end = after.find(' ').unwrap_or(after.len());
        let (unit, next) = after.split_at(end);
        let mult = match unit {
            "ms" | "msec" | "millisecond" | "milliseconds" => 1e-3,
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            "mon" | "mons" | "month" | "months" => 30.0 * 86400.0,
            "y" | "year" | "years" => 365.0 * 86400.0,
            _ => return Err(bad()),
        };
        secs += n * mult;
        rest = next.trim_start();
    }
    std::time::Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| bad())
}

/// The `generation := N` argument: a generation number, 1 or more.
pub fn arg_generation(v: &Value) -> Result<u64> {
    match value_label(v, "generation")? {
        0 => Err(Error::arg(
            "generation",
            "must be a generation number (1 or more; pocaduck_generations lists them), got 0",
        )),
        g => Ok(g),
    }
}

/// Parses `[min_x, min_y, min_z, max_x, max_y, max_z]`.
pub fn bbox_value(v: &Value, arg: &str) -> Result<BBox> {
    let shape = || {
        format!(
            "must be a list of 6 numbers [min_x, min_y, min_z, max_x, max_y, max_z], got {}",
            shown(v)
        )
    };
    if v.is_null() {
        return Err(Error::arg(
            arg,
            "must not be NULL (leave it out for no box)",
        ));
    }
    let items = v.to_list().ok_or_else(|| Error::arg(arg, shape()))?;
    if items.len() != 6 {
        return Err(Error::arg(arg, shape()));
    }
    let mut b = [0f64; 6];
    for (i, x) in items.iter().enumerate() {
        let t = x.logical_type_id();
        if x.is_null()
            || !(is_integer(t)
                || matches!(
                    t,
                    LogicalTypeId::Float | LogicalTypeId::Double | LogicalTypeId::Decimal
                ))
        {
            return Err(Error::arg(arg, shape()));
        }
        let text = x.to_string();
        b[i] = text.parse().map_err(|_| Error::arg(arg, shape()))?;
        // An integer bound must be exact as a DOUBLE (the box is compared in the coordinates'
        // own type from there): above 2^53 not every integer is.
        if (is_integer(t) || t == LogicalTypeId::Decimal)
            && exact_integer(&text, b[i]) == Some(false)
        {
            return Err(Error::arg(
                arg,
                format!(
                    "has bound {text}, which a DOUBLE cannot hold exactly (integers beyond ±2^53 must be multiples of a power of two there; the nearest is {}), got {}",
                    b[i] as i128,
                    shown(v)
                ),
            ));
        }
    }
    if b.iter().any(|x| x.is_nan()) {
        return Err(Error::arg(
            arg,
            format!("must not contain NaN, got {}", shown(v)),
        ));
    }
    if (0..3).any(|d| b[d] > b[d + 3]) {
        return Err(Error::arg(
            arg,
            format!("has a minimum above its maximum: {}", shown(v)),
        ));
    }
    Ok(b)
}

/// Whether the integer written `text` equals `f` exactly (`None`: `text` is not an integer).
fn exact_integer(text: &str, f: f64) -> Option<bool> {
    let text = text.trim();
    // A DECIMAL such as 9007199254740993.0 is an integer too.
    let int = match text.split_once('.') {
        Some((i, frac)) if frac.bytes().all(|c| c == b'0') => i,
        Some(_) => return None,
        None => text,
    };
    let n: i128 = int.parse().ok()?;
    Some(f.is_finite() && f as i128 == n)
}

#[cfg(test)]
mod tests {
    use super::{exact_integer, parse_duration_str, parse_size_str};
    use std::time::Duration;

    #[test]
    fn integer_bounds_must_be_exact_doubles() {
        assert_eq!(
            exact_integer("9007199254740992", 9007199254740992.0),
            Some(true)
        );
        assert_eq!(
            exact_integer("9007199254740993", 9007199254740993.0),
            Some(false)
        );
        assert_eq!(exact_integer("-5", -5.0), Some(true));
        assert_eq!(exact_integer("1.5", 1.5), None);
        assert_eq!(
            exact_integer("9007199254740993.00", 9007199254740993.0),
            Some(false)
        );
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size_str("64MB"), Ok(64_000_000));
        assert_eq!(parse_size_str("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size_str("4096"), Ok(4096));
        assert!(parse_size_str("12 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_size_str("MB").is_err());
    }

    #[test]
    fn durations_parse_with_units_and_interval_text() {
        let d = |s: &str| parse_duration_str(s);
        assert_eq!(d("auto"), Ok(None));
        assert_eq!(d(" AUTO "), Ok(None));
        assert_eq!(d("0"), Ok(Some(Duration::ZERO)));
        assert_eq!(d("2.5"), Ok(Some(Duration::from_millis(2500))));
        assert_eq!(d("500ms"), Ok(Some(Duration::from_millis(500))));
        assert_eq!(d("5 s"), Ok(Some(Duration::from_secs(5))));
        assert_eq!(d("2 Minutes"), Ok(Some(Duration::from_secs(120))));
        assert_eq!(d("1 hour"), Ok(Some(Duration::from_secs(3600))));
        assert_eq!(d("00:00:05"), Ok(Some(Duration::from_secs(5))));
        assert_eq!(d("01:01:30.5"), Ok(Some(Duration::from_millis(3_690_500))));
        // DuckDB's text of INTERVALs.
        assert_eq!(d("7 days"), Ok(Some(Duration::from_secs(7 * 86400))));
        assert_eq!(d("1 day 01:00:00"), Ok(Some(Duration::from_secs(90000))));
        assert_eq!(
            d("1 year 2 months 3 days 00:00:01"),
            Ok(Some(Duration::from_secs((365 + 60 + 3) * 86400 + 1)))
        );
        assert_eq!(d("2h 30min"), Ok(Some(Duration::from_secs(9000))));
        for bad in [
            "-1",
            "1 parsec",
            "s",
            "1:2",
            "a:b:c",
            "1e400",
            "nan",
            "1..2",
            "1 day day",
        ] {
            let e = d(bad).unwrap_err();
            assert!(e.contains("must be a duration"), "{bad}: {e}");
        }
    }
}
