//! Durations and byte sizes as the configuration file writes them ("250ms", "5s", "64MiB"):
//! parsed, and formatted back for `pgsidecar check`.

use std::time::Duration;

/// Formats a duration the way the configuration file writes it.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Formats a byte count the way the configuration file writes it.
pub(crate) fn format_size(n: usize) -> String {
    match n {
        n if n % (1 << 30) == 0 && n > 0 => format!("{}GiB", n >> 30),
        n if n % (1 << 20) == 0 && n > 0 => format!("{}MiB", n >> 20),
        n if n % (1 << 10) == 0 && n > 0 => format!("{}KiB", n >> 10),
        n => n.to_string(),
    }
}

/// Parses "250ms", "5s", "2m", "1h" (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"5s\""))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} (use ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))
}

/// Parses "64MiB", "512KiB", "1GiB", "1000" (bytes), "10MB" (decimal).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like \"64MiB\""))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}
