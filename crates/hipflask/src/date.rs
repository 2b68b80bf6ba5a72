//! Calendar arithmetic for the two date formats Flask puts on the wire: the
//! HTTP date of `" d"` tags and `Expires`, and RFC 2822 dates when reading a
//! `" d"` tag back. Kept dependency-free because it runs on every permanent
//! cookie write.

const DAY_NAMES: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTH_NAMES: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// Seconds of 0001-01-01T00:00:00Z, the earliest instant Python's `datetime` holds.
pub(crate) const MIN_UNIX: i64 = -62_135_596_800;
/// Seconds of 9999-12-31T23:59:59Z, the latest instant Python's `datetime` holds.
pub(crate) const MAX_UNIX: i64 = 253_402_300_799;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Broken-down UTC time of a Unix timestamp.
pub(crate) struct Civil {
    pub(crate) year: i64,
    pub(crate) month: u32,
    pub(crate) day: u32,
    pub(crate) hour: u32,
    pub(crate) minute: u32,
    pub(crate) second: u32,
    weekday: usize,
}

pub(crate) fn civil(unix: i64) -> Civil {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    Civil {
        year,
        month,
        day,
        hour: secs / 3600,
        minute: secs / 60 % 60,
        second: secs % 60,
        weekday: days.rem_euclid(7) as usize,
    }
}

thread_local! {
    /// The last date this thread wrote and its text: a server writes the
    /// same `Expires` for every permanent cookie within a second.
    static LAST_HTTP_DATE: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
}

/// Werkzeug's `http_date`: `Tue, 02 Jan 2024 03:04:05 GMT`, year padded to 4 digits.
pub(crate) fn write_http_date(out: &mut String, unix: i64) {
    with_http_date(unix, |text| out.push_str(text));
}

/// Runs `f` on [`write_http_date`]'s text for `unix` without copying it out,
/// so a caller can size its buffer before writing anything.
pub(crate) fn with_http_date<R>(unix: i64, f: impl FnOnce(&str) -> R) -> R {
    LAST_HTTP_DATE.with_borrow_mut(|(last, text)| {
        if *last != unix {
            text.clear();
            write_http_date_uncached(text, unix);
            *last = unix;
        }
        f(text)
    })
}

fn write_http_date_uncached(out: &mut String, unix: i64) {
    let c = civil(unix);
    if !(0..=9999).contains(&c.year) {
        // Only a lifetime of millennia gets here.
        write_http_date_fmt(out, &c);
        return;
    }
    // Every permanent cookie carries one of these: written digit by digit,
    // a fifth of the cost of the formatting machinery.
    let year = c.year as u32;
    let two = |n: u32| [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8];
    let mut buf = [0u8; 29];
    buf[..3].copy_from_slice(DAY_NAMES[c.weekday].as_bytes());
    buf[3..5].copy_from_slice(b", ");
    buf[5..7].copy_from_slice(&two(c.day));
    buf[7] = b' ';
    buf[8..11].copy_from_slice(MONTH_NAMES[c.month as usize - 1].as_bytes());
    buf[11] = b' ';
    buf[12..14].copy_from_slice(&two(year / 100));
    buf[14..16].copy_from_slice(&two(year));
    buf[16] = b' ';
    buf[17..19].copy_from_slice(&two(c.hour));
    buf[19] = b':';
    buf[20..22].copy_from_slice(&two(c.minute));
    buf[22] = b':';
    buf[23..25].copy_from_slice(&two(c.second));
    buf[25..].copy_from_slice(b" GMT");
    // All ASCII by construction.
    out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
}

/// [`write_http_date`] through the general formatter, for any year.
fn write_http_date_fmt(out: &mut String, c: &Civil) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAY_NAMES[c.weekday],
        c.day,
        MONTH_NAMES[c.month as usize - 1],
        c.year,
        c.hour,
        c.minute,
        c.second
    );
}

pub(crate) fn http_date(unix: i64) -> String {
    let mut s = String::with_capacity(29);
    write_http_date(&mut s, unix);
    s
}

/// `2024-01-02T03:04:05Z`: how a datetime is shown to serde, because both
/// `chrono` and `time::serde::rfc3339` read it.
pub(crate) fn rfc3339(unix: i64) -> String {
    let c = civil(unix);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", c.year, c.month, c.day, c.hour, c.minute, c.second)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Unix seconds of a UTC civil time, or `None` when a field is out of range.
pub(crate) fn from_civil(year: i64, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> Option<i64> {
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Python's email parser folds a leap second into the next minute.
    let unix = days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second);
    Some(unix)
}

/// Parses an RFC 2822 date the way `email.utils.parsedate_to_datetime` does for
/// the forms Flask and browsers write (`[Wdy,] DD Mon YYYY HH:MM[:SS] ZONE`).
/// Returns Unix seconds in UTC, or `None` where Werkzeug's `parse_date` gives `None`.
pub(crate) fn parse_rfc2822(text: &str) -> Option<i64> {
    let mut parts: Vec<&str> = text.split_whitespace().collect();
    if let Some(first) = parts.first() {
        // An optional day name, with or without its comma.
        let name = first.trim_end_matches(',');
        if DAY_NAMES.iter().any(|d| d.eq_ignore_ascii_case(name)) || first.ends_with(',') {
            parts.remove(0);
        }
    }
    if parts.len() < 4 {
        return None;
    }
    let (mut day_s, mut month_s) = (parts[0], parts[1]);
    if day_s.parse::<u32>().is_err() {
        // "Jan 02 2024 ..." is accepted by Python too.
        std::mem::swap(&mut day_s, &mut month_s);
    }
    let day: u32 = day_s.trim_end_matches(',').parse().ok()?;
    let month_s = month_s.trim_end_matches(',').to_ascii_lowercase();
    let month = MONTH_NAMES.iter().position(|m| month_s.starts_with(&m.to_ascii_lowercase()))? as u32 + 1;
    let year_s = parts[2].trim_end_matches(',');
    let mut year: i64 = year_s.parse().ok()?;
    if year_s.len() <= 2 {
        // RFC 2822 section 4.3, as Python applies it.
        year += if year > 68 { 1900 } else { 2000 };
    }
    let mut hms = parts[3].split(':');
    let hour: u32 = hms.next()?.parse().ok()?;
    let minute: u32 = hms.next()?.parse().ok()?;
    let second: u32 = match hms.next() {
        Some(s) => s.parse().ok()?,
        None => 0,
    };
    if hms.next().is_some() {
        return None;
    }
    let offset = match parts.get(4) {
        None => 0,
        Some(zone) => zone_offset(zone)?,
    };
    let unix = from_civil(year, month, day, hour, minute, second)? - offset;
    (MIN_UNIX..=MAX_UNIX).contains(&unix).then_some(unix)
}

/// Offset in seconds east of UTC of an RFC 2822 zone.
fn zone_offset(zone: &str) -> Option<i64> {
    let upper = zone.to_ascii_uppercase();
    let named = match upper.as_str() {
        "UT" | "UTC" | "GMT" | "Z" => Some(0),
        "EST" => Some(-5),
        "EDT" => Some(-4),
        "CST" => Some(-6),
        "CDT" => Some(-5),
        "MST" => Some(-7),
        "MDT" => Some(-6),
        "PST" => Some(-8),
        "PDT" => Some(-7),
        _ => None,
    };
    if let Some(hours) = named {
        return Some(hours * 3600);
    }
    let (sign, digits) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hh: i64 = digits[..2].parse().ok()?;
    let mm: i64 = digits[2..].parse().ok()?;
    Some(sign * (hh * 3600 + mm * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_matches_werkzeug_examples() {
        assert_eq!(http_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(from_civil(999, 12, 31, 0, 0, 1).unwrap()), "Tue, 31 Dec 0999 00:00:01 GMT");
        assert_eq!(http_date(MIN_UNIX), "Mon, 01 Jan 0001 00:00:00 GMT");
        assert_eq!(http_date(MAX_UNIX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn http_date_is_what_the_general_formatter_writes() {
        let reference = |t: i64| {
            let mut s = String::new();
            write_http_date_fmt(&mut s, &civil(t));
            s
        };
        // Every day boundary and odd second over the whole range, plus years
        // past 9999 and before year 0 (the fallback path).
        let mut t = MIN_UNIX - 86_400 * 800;
        while t < MAX_UNIX + 86_400 * 800 {
            assert_eq!(http_date(t), reference(t), "{t}");
            assert_eq!(http_date(t + 86_399), reference(t + 86_399), "{t}");
            t += 86_400 * 37 + 3_607;
        }
    }

    #[test]
    fn rfc2822_round_trips_http_dates() {
        for t in [0, 1_700_000_000, MIN_UNIX, MAX_UNIX, from_civil(999, 12, 31, 0, 0, 1).unwrap(), 951_782_400] {
            assert_eq!(parse_rfc2822(&http_date(t)), Some(t), "{t}");
        }
    }

    #[test]
    fn rfc2822_accepts_offsets_and_rejects_garbage() {
        assert_eq!(parse_rfc2822("Fri, 01 Mar 2024 05:30:00 +0100"), parse_rfc2822("Fri, 01 Mar 2024 04:30:00 GMT"));
        assert_eq!(parse_rfc2822("01 Mar 2024 04:30 GMT"), Some(1_709_267_400));
        for bad in ["garbage", "", "Tue, 31 Feb 2024 00:00:00 GMT", "1 Foo 2024 00:00:00"] {
            assert_eq!(parse_rfc2822(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_shape() {
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
