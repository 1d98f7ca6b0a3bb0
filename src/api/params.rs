//! Query parameters of the read endpoints, parsed into domain values at the
//! edge; every refusal names the parameter and an accepted form.

use super::error::ApiError;
use crate::engine::Filter;
use crate::model::time::{parse_duration, parse_instant, UNIX_MAX, UNIX_MIN};
use std::collections::BTreeSet;

/// Raw `name=value` pairs of a query string, checked against `allowed`.
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses a query string; refuses unknown and repeated names.
    pub fn parse(query: &str, allowed: &[&str]) -> Result<Params, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).map_err(|e| {
            ApiError::bad_request("invalid_parameter", format!("unreadable query string: {e}"))
        })?;
        for (i, (k, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("unknown parameter `{k}`; accepted: {}", allowed.join(", ")),
                ));
            }
            if pairs[..i].iter().any(|(k2, _)| k2 == k) {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("parameter `{k}` is given twice; give it once"),
                ));
            }
        }
        Ok(Params(pairs))
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// An instant (Unix seconds or RFC 3339) within the supported range.
    pub fn instant(&self, name: &str) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let t = parse_instant(v)
            .map_err(|e| ApiError::bad_request("invalid_parameter", format!("`{name}`: {e}")))?;
        if !(UNIX_MIN..=UNIX_MAX).contains(&t) {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("`{name}` = {t} is outside the supported instants [{UNIX_MIN}, {UNIX_MAX}] (MJD 0 to 100000)"),
            ));
        }
        Ok(Some(t))
    }

    /// A finite float.
    pub fn float(&self, name: &str) -> Result<Option<f64>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(Some(x)),
            _ => Err(ApiError::bad_request(
                "invalid_parameter",
                format!("`{name}` = `{v}` is not a finite number (e.g. 2.5)"),
            )),
        }
    }

    /// A positive integer.
    pub fn positive(&self, name: &str) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        match v.trim().parse::<i64>() {
            Ok(x) if x >= 1 => Ok(Some(x)),
            _ => Err(ApiError::bad_request(
                "invalid_parameter",
                format!("`{name}` = `{v}` must be an integer of at least 1"),
            )),
        }
    }

    /// The bin width in seconds (default 900).
    pub fn bin_width(&self) -> Result<i64, ApiError> {
        let Some(v) = self.get("bin") else {
            return Ok(900);
        };
        let w = parse_duration(v)
            .map_err(|e| ApiError::bad_request("invalid_parameter", format!("`bin`: {e}")))?;
        if w < 1 {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("`bin` = `{v}` is below 1 s; use a width of at least 1 second"),
            ));
        }
        if w > UNIX_MAX - UNIX_MIN {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("`bin` = `{v}` is wider than every supported instant range"),
            ));
        }
        Ok(w)
    }

    /// The four block filters.
    pub fn filter(&self) -> Result<Filter, ApiError> {
        let scheduled = match self.get("scheduled") {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(v) => {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("`scheduled` = `{v}` must be `true` or `false`"),
                ))
            }
        };
        let block_ids = self.get("block_ids").map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<BTreeSet<_>>()
        });
        Ok(Filter {
            priority_min: self.float("priority_min")?,
            priority_max: self.float("priority_max")?,
            scheduled,
            block_ids,
        })
    }
}
