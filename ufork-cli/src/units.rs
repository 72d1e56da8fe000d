//! Parsing and printing of durations and sizes, for flags and tables.

use std::time::Duration;

/// Parses a whole number from 1 to `max`, saying which bound was missed.
fn parse_count(text: &str, max: u64) -> Result<u64, String> {
    let text = text.trim();
    match text.parse::<i128>() {
        Ok(n) if n < 1 => Err("must be at least 1".to_owned()),
        Ok(n) if n > i128::from(max) => Err(format!("must be at most {max}")),
        Ok(n) => Ok(n as u64),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

/// The most workers `--workers` takes.
pub const MAX_WORKERS: u32 = 1024;

/// Parses `--workers`: 1 to [`MAX_WORKERS`].
pub fn parse_workers(text: &str) -> Result<u32, String> {
    parse_count(text, u64::from(MAX_WORKERS)).map(|n| n as u32)
}

/// Parses a count of at least 1 that fits a `u32`.
pub fn parse_count_u32(text: &str) -> Result<u32, String> {
    parse_count(text, u64::from(u32::MAX)).map(|n| n as u32)
}

/// The most serving threads `--threads` takes.
pub const MAX_THREADS: u32 = 1024;

/// Parses `--threads`: 1 to [`MAX_THREADS`].
pub fn parse_threads(text: &str) -> Result<usize, String> {
    parse_count(text, u64::from(MAX_THREADS)).map(|n| n as usize)
}

/// Parses a count that may be 0 (`--max-requests-jitter`).
pub fn parse_count_or_zero(text: &str) -> Result<u64, String> {
    match text.trim() {
        "0" => Ok(0),
        other => parse_count(other, u64::MAX).map_err(|e| {
            if e == "must be at least 1" {
                "must be 0 or more".to_owned()
            } else {
                e
            }
        }),
    }
}

/// The largest request line or head `--limit-request-line` and
/// `--limit-request-field-size` take: 1 MiB. Every connection may buffer
/// that much (one client sending a 548 MB head grew a worker to 1 GB, kept
/// after the connection ended).
pub const MAX_HEAD_BYTES: usize = 1024 * 1024;

/// The most header fields `--limit-request-fields` takes: gunicorn's bound.
pub const MAX_HEAD_FIELDS: u32 = 32_768;

/// Parses `--limit-request-line` and `--limit-request-field-size`: a size
/// up to [`MAX_HEAD_BYTES`]; `0` (gunicorn's "unlimited") is that bound.
pub fn parse_head_bytes(text: &str) -> Result<usize, String> {
    if text.trim() == "0" {
        return Ok(MAX_HEAD_BYTES);
    }
    match parse_size(text)? {
        bytes if bytes > MAX_HEAD_BYTES as u64 => Err(format!(
            "must be at most {MAX_HEAD_BYTES} (1M; 0 means that bound, as gunicorn's 0 means no limit)"
        )),
        bytes => Ok(bytes as usize),
    }
}

/// Parses `--limit-request-fields`: 1 to [`MAX_HEAD_FIELDS`]; `0`
/// (gunicorn's "unlimited") is that bound.
pub fn parse_head_fields(text: &str) -> Result<u32, String> {
    if text.trim() == "0" {
        return Ok(MAX_HEAD_FIELDS);
    }
    parse_count(text, u64::from(MAX_HEAD_FIELDS))
        .map(|n| n as u32)
        .map_err(|e| format!("{e} (0 means {MAX_HEAD_FIELDS}, as gunicorn's 0 means no limit)"))
}

/// Parses `KEY=VALUE` for `--env`.
pub fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !text.contains('\0') => {
            Ok((key.to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "`{text}` is not KEY=VALUE (like --env RUST_LOG=info)"
        )),
    }
}

/// Parses seconds: `30`, `1.5`, or with a unit: `500ms`, `10s`, `2m`, `1h`.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err("must be positive".to_owned());
    }
    let (number, scale) = split_unit(text);
    let scale = match scale.to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` (use seconds, like 30 or 1.5, or ms, s, m, h)"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds (like 30 or 1.5)"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err("must be positive".to_owned());
    }
    let seconds = value * scale;
    if seconds > MAX_SECONDS as f64 {
        return Err(format!("must be at most {MAX_SECONDS} seconds (100 years)"));
    }
    match Duration::try_from_secs_f64(seconds) {
        // A value so small it rounds to nothing would reach the builders as
        // zero, which they refuse only once the pool is starting.
        Ok(d) if d.is_zero() => Err("must be at least 1 ns (0.000000001)".to_owned()),
        Ok(d) => Ok(d),
        Err(_) => Err("is too long".to_owned()),
    }
}

/// Parses `serve --timeout`: seconds as [`parse_seconds`], or `0` for never
/// (gunicorn's `--timeout 0` disables the timeout), which is
/// [`MAX_SECONDS`].
pub fn parse_seconds_or_never(text: &str) -> Result<Duration, String> {
    parse_seconds_or_zero(text).map(|d| {
        if d.is_zero() {
            Duration::from_secs(MAX_SECONDS)
        } else {
            d
        }
    })
}

/// Parses seconds as [`parse_seconds`], or `0` (`0.0`, `0s`) for zero.
pub fn parse_seconds_or_zero(text: &str) -> Result<Duration, String> {
    if text.trim().starts_with('-') {
        return Err("must be 0 or more".to_owned());
    }
    match split_unit(text.trim()) {
        (number, "" | "s") if number.parse::<f64>().is_ok_and(|v| v == 0.0) => Ok(Duration::ZERO),
        _ => parse_seconds(text),
    }
}

/// The longest duration a flag takes: 100 years, which is "never" for any
/// pool, yet leaves every deadline (`Instant` plus it, in nanoseconds) far
/// from overflowing.
pub const MAX_SECONDS: u64 = 100 * 365 * 24 * 3600;

/// Parses a size in bytes: `1048576`, `512K`, `512M`, `2G`, `1.5GiB`, `10MB`.
/// Units are binary (K = 1024) whichever spelling is used.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err("must be positive".to_owned());
    }
    let (number, unit) = split_unit(text);
    let unit = unit.to_ascii_uppercase();
    let unit = unit.trim_end_matches("IB").trim_end_matches('B');
    let scale: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => {
            return Err(format!(
                "`{text}` is not a size (use bytes or a unit: 512K, 512M, 2G)"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (use bytes or a unit: 512K, 512M, 2G)"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err("must be positive".to_owned());
    }
    let bytes = value * scale as f64;
    if bytes > u64::MAX as f64 {
        return Err("is too large".to_owned());
    }
    if bytes < 1.0 {
        // `0.1` rounds down to 0 bytes, which no limit means.
        return Err("must be at least 1 byte".to_owned());
    }
    Ok(bytes as u64)
}

fn split_unit(text: &str) -> (&str, &str) {
    let at = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    (text[..at].trim(), text[at..].trim())
}

/// A short duration for tables: `0.3s`, `42s`, `3m05s`, `2h07m`, `3d04h`.
pub fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 10 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if secs < 86400 {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    } else {
        format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600)
    }
}

/// A short size for tables: `812K`, `3.1M`, `1.2G`.
pub fn short_size(bytes: u64) -> String {
    const K: f64 = 1024.0;
    let b = bytes as f64;
    if b < K * K {
        format!("{:.0}K", b / K)
    } else if b < K * K * K {
        format!("{:.1}M", b / K / K)
    } else {
        format!("{:.1}G", b / K / K / K)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parse_with_and_without_units() {
        assert_eq!(parse_seconds("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_seconds("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_seconds("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_seconds("0").is_err());
        for nothing in ["0.0000000001", "0.0000000001ms", "0.000000000000000000001h"] {
            assert_eq!(
                parse_seconds(nothing),
                Err("must be at least 1 ns (0.000000001)".to_owned()),
                "{nothing}"
            );
        }
        assert_eq!(parse_seconds("0.000000001"), Ok(Duration::from_nanos(1)));
        assert!(parse_seconds("abc").is_err());
        assert!(parse_seconds("3 weeks").is_err());
        assert_eq!(
            parse_seconds("3153600000"),
            Ok(Duration::from_secs(MAX_SECONDS))
        );
        for huge in ["3153600001", "18446744073", "10000000000000000000"] {
            assert_eq!(
                parse_seconds(huge),
                Err("must be at most 3153600000 seconds (100 years)".to_owned()),
                "{huge}"
            );
        }
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("10MB"), Ok(10 << 20));
        assert!(parse_size("12Q").is_err());
        assert_eq!(parse_size("-1"), Err("must be positive".to_owned()));
        assert_eq!(parse_size("0.5"), Err("must be at least 1 byte".to_owned()));
        assert_eq!(
            parse_size("0.0001K"),
            Err("must be at least 1 byte".to_owned())
        );
    }

    #[test]
    fn counts_name_the_bound_they_miss() {
        assert_eq!(parse_workers("4"), Ok(4));
        assert_eq!(parse_workers("-1"), Err("must be at least 1".to_owned()));
        assert_eq!(parse_workers("0"), Err("must be at least 1".to_owned()));
        assert_eq!(
            parse_workers("1025"),
            Err("must be at most 1024".to_owned())
        );
        assert_eq!(parse_count_u32("0"), Err("must be at least 1".to_owned()));
        assert_eq!(
            parse_count_u32("x"),
            Err("`x` is not a whole number".to_owned())
        );
        assert_eq!(parse_seconds("-5"), Err("must be positive".to_owned()));
        // Where 0 is a value (never, or off), the bound says so.
        assert_eq!(
            parse_seconds_or_zero("-1"),
            Err("must be 0 or more".to_owned())
        );
        assert_eq!(
            parse_seconds_or_never("-1"),
            Err("must be 0 or more".to_owned())
        );
    }

    #[test]
    fn new_flag_values_parse_or_say_why() {
        assert_eq!(parse_threads("4"), Ok(4));
        assert_eq!(
            parse_threads("1025"),
            Err("must be at most 1024".to_owned())
        );
        assert_eq!(parse_count_or_zero("0"), Ok(0));
        assert_eq!(
            parse_count_or_zero("-5"),
            Err("must be 0 or more".to_owned())
        );
        let never = Ok(Duration::from_secs(MAX_SECONDS));
        for zero in ["0", " 0 ", "0.0", "0s"] {
            assert_eq!(parse_seconds_or_never(zero), never, "{zero:?}");
        }
        assert_eq!(
            parse_seconds_or_never("2.5"),
            Ok(Duration::from_millis(2500))
        );
        assert_eq!(parse_seconds_or_never("0ms"), parse_seconds("0ms"));
        assert_eq!(
            parse_seconds_or_never("-0"),
            Err("must be 0 or more".to_owned())
        );
        assert_eq!(parse_seconds_or_zero("0"), Ok(Duration::ZERO));
        assert_eq!(parse_seconds_or_zero("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_count_or_zero("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_head_bytes("8K"), Ok(8192));
        assert_eq!(parse_head_bytes("1M"), Ok(MAX_HEAD_BYTES));
        assert_eq!(parse_head_bytes("0"), Ok(MAX_HEAD_BYTES));
        assert!(
            parse_head_bytes("1048577")
                .unwrap_err()
                .contains("at most 1048576")
        );
        assert!(parse_head_bytes("99999999999").is_err());
        assert!(parse_head_bytes("-1").is_err());
        assert_eq!(parse_head_fields("0"), Ok(MAX_HEAD_FIELDS));
        assert_eq!(parse_head_fields("100"), Ok(100));
        assert!(
            parse_head_fields("32769")
                .unwrap_err()
                .contains("at most 32768")
        );
        assert_eq!(parse_env("A=b=c"), Ok(("A".to_owned(), "b=c".to_owned())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }

    #[test]
    fn tables_use_short_forms() {
        assert_eq!(short_duration(Duration::from_millis(300)), "0.3s");
        assert_eq!(short_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(short_size(3 << 20), "3.0M");
    }
}
