//! Instants: MJD in uploads, Unix seconds everywhere else (DESIGN §2).

/// MJD of the Unix epoch.
const MJD_UNIX_EPOCH: f64 = 40_587.0;
/// Lowest valid MJD.
pub const MJD_MIN: f64 = 0.0;
/// Highest valid MJD.
pub const MJD_MAX: f64 = 100_000.0;
/// Unix seconds of MJD 0, the earliest instant visbin accepts anywhere.
pub const UNIX_MIN: i64 = -3_506_716_800;
/// Unix seconds of MJD 100000, the latest instant visbin accepts anywhere.
pub const UNIX_MAX: i64 = 5_133_283_200;

/// Converts an MJD to Unix seconds, rounded to the nearest second; `None`
/// for a non-finite MJD or one outside `[0, 100000]`.
pub fn mjd_to_unix(mjd: f64) -> Option<i64> {
    if !mjd.is_finite() || !(MJD_MIN..=MJD_MAX).contains(&mjd) {
        return None;
    }
    Some(((mjd - MJD_UNIX_EPOCH) * 86_400.0).round() as i64)
}

/// Parses an API instant: integer Unix seconds or an RFC 3339 timestamp
/// (fractional seconds truncated).
pub fn parse_instant(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(v) = t.parse::<i64>() {
        return Ok(v);
    }
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(dt) => Ok(dt.timestamp()),
        Err(_) => Err(format!(
            "`{text}` is neither integer Unix seconds nor an RFC 3339 timestamp \
             (e.g. 1737244800 or 2025-01-19T00:00:00Z)"
        )),
    }
}

/// Parses a bin width: whole seconds (`900`) or a duration made of
/// `<n>w`, `<n>d`, `<n>h`, `<n>m`, `<n>s` parts (`15m`, `1h30m`, `1d`).
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "`{text}` is not a bin width; use seconds (900) or a duration such as 90s, 15m, 1h, 1d"
        )
    };
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(v) = t.parse::<i64>() {
        return Ok(v);
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    for ch in t.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit = match ch {
            'w' => 604_800,
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mjd_conversion_rounds_away_float_noise() {
        assert_eq!(mjd_to_unix(40_587.0), Some(0));
        // 1/24 day is 3600.0000288 s after float arithmetic.
        assert_eq!(
            mjd_to_unix(60_694.0 + 1.0 / 24.0),
            Some(1_737_244_800 + 3600)
        );
        assert_eq!(mjd_to_unix(MJD_MIN), Some(UNIX_MIN));
        assert_eq!(mjd_to_unix(MJD_MAX), Some(UNIX_MAX));
        assert_eq!(mjd_to_unix(-0.5), None);
        assert_eq!(mjd_to_unix(100_000.1), None);
        assert_eq!(mjd_to_unix(f64::NAN), None);
    }

    #[test]
    fn instants_accept_unix_seconds_and_rfc3339() {
        assert_eq!(parse_instant("1737244800"), Ok(1_737_244_800));
        assert_eq!(parse_instant("2025-01-19T00:00:00Z"), Ok(1_737_244_800));
        assert_eq!(
            parse_instant("2025-01-19T00:00:00.999+00:00"),
            Ok(1_737_244_800)
        );
        assert!(parse_instant("yesterday").is_err());
    }

    #[test]
    fn durations_accept_seconds_and_units() {
        assert_eq!(parse_duration("900"), Ok(900));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("1d"), Ok(86_400));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert!(parse_duration("15x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("15m3").is_err());
    }
}
