//! Typed values of the update API. Each goes through one parser on the way in and prints the
//! way that parser reads it; each tells the API server, through its schema, what it accepts.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// What [`parse_duration`] accepts, for CRD schemas: `0` or one or more `<digits><h|m|s>`.
pub const DURATION_PATTERN: &str = "^(0|([0-9]+[hms])+)$";

/// Go-style durations as Kubernetes writes them: `8760h`, `90m`, `1h30m`, `45s`, `0s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration such as 8760h, 30m, 1h30m or 45s");
    if s.is_empty() {
        return Err(bad());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            'd' => {
                return Err(format!(
                    "`{s}`: days are not a unit here; write hours, e.g. {}h",
                    s.trim_end_matches('d').parse::<u64>().unwrap_or(1) * 24
                ));
            }
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !num.is_empty() {
        return Err(format!("`{s}` lacks a unit at the end (h, m or s)"));
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way [`parse_duration`] reads it (whole seconds).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, 'h'), (m, 'm'), (s, 's')] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// A percentage from 1% to 100%.
pub fn parse_percent(s: &str) -> Result<u8, String> {
    let bad = || format!("`{s}` is not a percentage from 1% to 100%");
    let n: u8 = s
        .strip_suffix('%')
        .ok_or_else(bad)?
        .parse()
        .map_err(|_| bad())?;
    if (1..=100).contains(&n) {
        Ok(n)
    } else {
        Err(bad())
    }
}

/// Serde through `Display`/`FromStr`, for the string-typed values below.
macro_rules! serde_as_string {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A duration written the Go way (see [`parse_duration`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
    pub const fn minutes(m: u64) -> Self {
        Self(Duration::from_secs(m * 60))
    }
    pub const fn hours(h: u64) -> Self {
        Self(Duration::from_secs(h * 3600))
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl FromStr for GoDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Self)
    }
}

serde_as_string!(GoDuration);

impl JsonSchema for GoDuration {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": DURATION_PATTERN })
    }
}

/// An instant, written as RFC 3339 in UTC (as Kubernetes writes times).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub jiff::Timestamp);

impl Time {
    pub fn now() -> Self {
        Self(jiff::Timestamp::now())
    }
}

impl From<jiff::Timestamp> for Time {
    fn from(t: jiff::Timestamp) -> Self {
        Self(t)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Time {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<jiff::Timestamp>()
            .map(Self)
            .map_err(|e| format!("`{s}` is not an RFC 3339 time: {e}"))
    }
}

serde_as_string!(Time);

impl JsonSchema for Time {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Time".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "date-time" })
    }
}

/// A count of nodes or a percentage of them (1% to 100%).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOrPercent {
    Count(u32),
    Percent(u8),
}

impl IntOrPercent {
    /// The count this means for `total` nodes (percentages round down): at least one, so a
    /// policy always progresses.
    pub fn resolve(self, total: usize) -> usize {
        match self {
            IntOrPercent::Count(n) => (n as usize).max(1),
            IntOrPercent::Percent(p) => (total * usize::from(p) / 100).max(1),
        }
    }
}

impl Default for IntOrPercent {
    fn default() -> Self {
        IntOrPercent::Count(1)
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrPercent::Count(n) => write!(f, "{n}"),
            IntOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrPercent::Count(n) => s.serialize_u32(*n),
            IntOrPercent::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => Ok(IntOrPercent::Count(n)),
            Raw::Text(s) => parse_percent(&s)
                .map(IntOrPercent::Percent)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for IntOrPercent {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "IntOrPercent".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The structural-schema spelling of int-or-string (Kubernetes 1.16+); `pattern` only
        // judges strings, so a count passes it.
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [{ "type": "integer" }, { "type": "string" }],
            "pattern": "^(100|[1-9][0-9]?)%$"
        })
    }
}

/// A day of the week, as a maintenance window names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl From<Weekday> for jiff::civil::Weekday {
    fn from(d: Weekday) -> Self {
        use jiff::civil::Weekday as J;
        match d {
            Weekday::Mon => J::Monday,
            Weekday::Tue => J::Tuesday,
            Weekday::Wed => J::Wednesday,
            Weekday::Thu => J::Thursday,
            Weekday::Fri => J::Friday,
            Weekday::Sat => J::Saturday,
            Weekday::Sun => J::Sunday,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_and_match_the_schema_pattern() {
        for (text, secs) in [
            ("90s", 90),
            ("1h30m", 5400),
            ("0s", 0),
            ("8760h", 31_536_000),
        ] {
            let d: GoDuration = text.parse().expect(text);
            assert_eq!(d.0.as_secs(), secs);
            let again: GoDuration = d.to_string().parse().expect("printed form parses");
            assert_eq!(again, d);
        }
        for bad in ["", "-5m", "soon", "5", "1.5h", "2d", "10 m"] {
            assert!(bad.parse::<GoDuration>().is_err(), "{bad:?} accepted");
        }
        // The schema the API server is given accepts exactly what the parser accepts.
        let schema = serde_json::to_value(schemars::schema_for!(GoDuration)).expect("schema");
        let validator = jsonschema::validator_for(&schema).expect("valid schema");
        for s in [
            "0", "0s", "90s", "1h30m", "", "-5m", "soon", "5", "1.5h", "2d", "10 m",
        ] {
            assert_eq!(
                validator.is_valid(&serde_json::json!(s)),
                parse_duration(s).is_ok(),
                "schema and parser disagree on {s:?}"
            );
        }
    }

    #[test]
    fn int_or_percent() {
        let p: IntOrPercent = serde_json::from_str("\"25%\"").expect("percent");
        assert_eq!(p.resolve(8), 2);
        assert_eq!(p.resolve(3), 1, "never zero");
        let c: IntOrPercent = serde_json::from_str("2").expect("count");
        assert_eq!(c.resolve(8), 2);
        for bad in ["\"x\"", "\"0%\"", "\"101%\"", "-1"] {
            assert!(serde_json::from_str::<IntOrPercent>(bad).is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_string(&p).expect("json"), "\"25%\"");
        let schema = serde_json::to_value(schemars::schema_for!(IntOrPercent)).expect("schema");
        let validator = jsonschema::validator_for(&schema).expect("valid schema");
        for (v, ok) in [
            ("2", true),
            ("\"25%\"", true),
            ("\"0%\"", false),
            ("\"x\"", false),
        ] {
            let v: serde_json::Value = serde_json::from_str(v).expect("json");
            assert_eq!(validator.is_valid(&v), ok, "{v}");
        }
    }

    #[test]
    fn times_are_rfc3339() {
        let t: Time = serde_json::from_str("\"2026-11-26T10:00:00Z\"").expect("time");
        assert_eq!(
            serde_json::to_string(&t).expect("json"),
            "\"2026-11-26T10:00:00Z\""
        );
        assert!(serde_json::from_str::<Time>("\"yesterday\"").is_err());
    }
}
