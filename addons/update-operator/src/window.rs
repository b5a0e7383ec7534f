//! Maintenance windows: on the listed days (every day when none), at a local time in the
//! window's time zone, open for a duration of elapsed time.
//!
//! - A window opened late in the evening stays open past midnight (it belongs to the day it
//!   opened on).
//! - Daylight saving: a start time that does not exist that day (spring forward) opens at
//!   the first instant after the gap; a start time that happens twice (fall back) opens at
//!   the first of them. The duration is always elapsed time, so a window never grows or
//!   shrinks with the clock change.

use std::time::Duration;

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan as _};
use strata_update_api::{GoDuration, WindowSpec};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WindowError {
    #[error("`{0}` is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun)")]
    Day(String),
    #[error("`{0}` is not a time of day (HH:MM)")]
    Start(String),
    #[error("`{0}` is not a duration between 1m and 7 days (e.g. 4h, 90m, 1h30m)")]
    Duration(String),
    #[error("`{0}` is not an IANA time zone (e.g. Europe/Berlin, UTC)")]
    TimeZone(String),
}

/// One maintenance window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    days: Vec<Weekday>,
    start: Time,
    duration: Duration,
    tz: TimeZone,
}

fn weekday(s: &str) -> Result<Weekday, WindowError> {
    Ok(match s {
        "Mon" => Weekday::Monday,
        "Tue" => Weekday::Tuesday,
        "Wed" => Weekday::Wednesday,
        "Thu" => Weekday::Thursday,
        "Fri" => Weekday::Friday,
        "Sat" => Weekday::Saturday,
        "Sun" => Weekday::Sunday,
        _ => return Err(WindowError::Day(s.into())),
    })
}

impl Window {
    /// A window from an UpdatePolicy's typed fields.
    pub fn from_spec(w: &WindowSpec) -> Result<Self, WindowError> {
        let days = w.days.iter().map(|d| Weekday::from(*d)).collect();
        Self::new(days, &w.start, w.duration.0, &w.time_zone)
    }

    /// A window from text, as the fields are written.
    pub fn parse(
        days: &[&str],
        start: &str,
        duration: &str,
        tz: &str,
    ) -> Result<Self, WindowError> {
        let days = days
            .iter()
            .map(|d| weekday(d))
            .collect::<Result<Vec<_>, _>>()?;
        let duration = duration
            .parse::<GoDuration>()
            .map_err(|_| WindowError::Duration(duration.into()))?;
        Self::new(days, start, duration.0, tz)
    }

    fn new(
        days: Vec<Weekday>,
        start: &str,
        duration: Duration,
        tz: &str,
    ) -> Result<Self, WindowError> {
        let start = match start.split_once(':') {
            Some((h, m)) if h.len() == 2 && m.len() == 2 => {
                let h: i8 = h.parse().map_err(|_| WindowError::Start(start.into()))?;
                let m: i8 = m.parse().map_err(|_| WindowError::Start(start.into()))?;
                Time::new(h, m, 0, 0).map_err(|_| WindowError::Start(start.into()))?
            }
            _ => return Err(WindowError::Start(start.into())),
        };
        if duration < Duration::from_secs(60) || duration > Duration::from_secs(7 * 86_400) {
            return Err(WindowError::Duration(GoDuration(duration).to_string()));
        }
        let tz = TimeZone::get(tz).map_err(|_| WindowError::TimeZone(tz.into()))?;
        Ok(Self {
            days,
            start,
            duration,
            tz,
        })
    }

    fn opens_on(&self, date: Date) -> bool {
        self.days.is_empty() || self.days.contains(&date.weekday())
    }

    /// The instant the window opens on `date` (local), if it opens that day.
    fn opening(&self, date: Date) -> Option<Timestamp> {
        if !self.opens_on(date) {
            return None;
        }
        // "compatible": in a gap, the instant after it; in a fold, the earlier one.
        date.to_datetime(self.start)
            .to_zoned_datetime(self.tz.clone())
            .ok()
            .map(|z| z.timestamp())
    }

    /// The local dates from `days_before` days before `t`'s local date to `days_after` after.
    fn dates_around(&self, t: Timestamp, days_before: i64, days_after: i64) -> Vec<Date> {
        let today = t.to_zoned_datetime(self.tz.clone()).date();
        (-days_before..=days_after)
            .filter_map(|n| today.checked_add(n.days()).ok())
            .collect()
    }

    fn duration_days(&self) -> i64 {
        (self.duration.as_secs() / 86_400) as i64 + 1
    }

    /// Whether the window is open at `t`.
    pub fn is_open(&self, t: Timestamp) -> bool {
        self.dates_around(t, self.duration_days(), 0)
            .into_iter()
            .filter_map(|d| self.opening(d))
            .any(|open| open <= t && t < add(open, self.duration))
    }

    /// The first instant at or after `t` when the window is open (`t` itself when open).
    pub fn next_open(&self, t: Timestamp) -> Option<Timestamp> {
        if self.is_open(t) {
            return Some(t);
        }
        self.dates_around(t, 0, 8)
            .into_iter()
            .filter_map(|d| self.opening(d))
            .find(|open| *open > t)
    }
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// Whether reboots are allowed at `t`: no windows means any time; otherwise any open window.
pub fn allowed(windows: &[Window], t: Timestamp) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.is_open(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn berlin(days: &[&str], start: &str, duration: &str) -> Window {
        Window::parse(days, start, duration, "Europe/Berlin").expect("window")
    }

    #[test]
    fn open_on_its_days_in_its_time_zone() {
        let w = berlin(&["Sat", "Sun"], "02:00", "4h");
        // Saturday 2026-11-28, 02:00 Berlin (CET) = 01:00 UTC.
        assert!(!w.is_open(at("2026-11-28T00:59:59Z")));
        assert!(w.is_open(at("2026-11-28T01:00:00Z")));
        assert!(w.is_open(at("2026-11-28T04:59:59Z")));
        assert!(!w.is_open(at("2026-11-28T05:00:00Z")));
        assert!(!w.is_open(at("2026-11-27T01:30:00Z")), "Friday");
        assert!(w.is_open(at("2026-11-29T01:30:00Z")), "Sunday");
        assert_eq!(
            w.next_open(at("2026-11-25T12:00:00Z")),
            Some(at("2026-11-28T01:00:00Z"))
        );
        assert_eq!(
            w.next_open(at("2026-11-28T02:00:00Z")),
            Some(at("2026-11-28T02:00:00Z")),
            "already open"
        );
    }

    #[test]
    fn a_window_across_midnight_belongs_to_the_day_it_opened() {
        let w = Window::parse(&["Sat"], "23:00", "4h", "UTC").expect("window");
        assert!(
            w.is_open(at("2026-11-29T01:00:00Z")),
            "Sunday 01:00, opened Saturday"
        );
        assert!(!w.is_open(at("2026-11-29T03:00:00Z")));
        assert!(
            !w.is_open(at("2026-11-28T01:00:00Z")),
            "Saturday 01:00: Friday did not open"
        );
        assert_eq!(
            w.next_open(at("2026-11-29T03:00:00Z")),
            Some(at("2026-12-05T23:00:00Z"))
        );
    }

    #[test]
    fn spring_forward_gap_opens_after_the_gap_for_the_same_elapsed_time() {
        // 2026-03-29: Berlin jumps from 02:00 CET to 03:00 CEST; 02:30 does not exist.
        let w = berlin(&["Sun"], "02:30", "1h");
        // The first instant after the gap: 03:30 CEST = 01:30 UTC; open one hour.
        assert!(!w.is_open(at("2026-03-29T01:29:59Z")));
        assert!(w.is_open(at("2026-03-29T01:30:00Z")));
        assert!(w.is_open(at("2026-03-29T02:29:59Z")));
        assert!(!w.is_open(at("2026-03-29T02:30:00Z")));
    }

    #[test]
    fn fall_back_fold_opens_at_the_first_occurrence() {
        // 2026-10-25: Berlin goes back from 03:00 CEST to 02:00 CET; 02:30 happens twice.
        let w = berlin(&["Sun"], "02:30", "1h");
        // First 02:30 is CEST = 00:30 UTC; one elapsed hour later it closes (01:30 UTC, which
        // the clock shows as the second 02:30).
        assert!(!w.is_open(at("2026-10-25T00:29:59Z")));
        assert!(w.is_open(at("2026-10-25T00:30:00Z")));
        assert!(w.is_open(at("2026-10-25T01:29:59Z")));
        assert!(!w.is_open(at("2026-10-25T01:30:00Z")));
    }

    #[test]
    fn windows_combine_and_none_means_any_time() {
        let nights = Window::parse(&[], "22:00", "8h", "America/New_York").expect("window");
        let weekend = berlin(&["Sat"], "10:00", "2h");
        // Wednesday 2026-11-25 03:00 UTC = Tuesday 22:00 New York (EST).
        assert!(allowed(
            &[nights.clone(), weekend.clone()],
            at("2026-11-25T03:00:00Z")
        ));
        assert!(!allowed(&[nights, weekend], at("2026-11-25T15:00:00Z")));
        assert!(allowed(&[], at("2026-11-25T15:00:00Z")));
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(
            Window::parse(&["Sunday"], "02:00", "1h", "UTC"),
            Err(WindowError::Day("Sunday".into()))
        );
        assert_eq!(
            Window::parse(&[], "2:00", "1h", "UTC"),
            Err(WindowError::Start("2:00".into()))
        );
        assert_eq!(
            Window::parse(&[], "25:00", "1h", "UTC"),
            Err(WindowError::Start("25:00".into()))
        );
        assert_eq!(
            Window::parse(&[], "02:00", "10s", "UTC"),
            Err(WindowError::Duration("10s".into()))
        );
        assert_eq!(
            Window::parse(&[], "02:00", "1h", "Mars/Olympus"),
            Err(WindowError::TimeZone("Mars/Olympus".into()))
        );
        assert!(Window::parse(&[], "02:00", "1h30m", "UTC").is_ok());
    }
}
