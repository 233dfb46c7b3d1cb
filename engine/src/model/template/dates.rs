//! Dates and times read with an explicit format (`parseDate`, `parseDateTime`,
//! `parseInstant`): chrono's `strftime` syntax (`%d.%m.%Y`, `%Y%m%d%H%M%S%z`, `%e %b %Y`) or
//! `unix`/`unixMillis` for epoch times written as text, local times read in a declared zone,
//! written as FHIR `date`, `dateTime` or `instant` with the precision the format has.

use chrono::format::{Fixed, Item, Numeric, Parsed, StrftimeItems, parse};
use chrono::{
    DateTime, Datelike, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, SecondsFormat,
    TimeZone, Utc,
};
use chrono_tz::Tz;

/// The FHIR type a parse writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Date,
    DateTime,
    Instant,
}

impl Output {
    fn name(self) -> &'static str {
        match self {
            Output::Date => "date",
            Output::DateTime => "dateTime",
            Output::Instant => "instant",
        }
    }
}

/// Why a date could not be read with a format, or a format cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateFormatError {
    #[error("`{format}` is not a date format: {reason}")]
    BadFormat {
        format: String,
        reason: &'static str,
    },
    #[error("the date format `{format}` has no {field}")]
    Missing { format: String, field: &'static str },
    #[error("the date format `{format}` has no time, so it cannot make a FHIR {output}")]
    NoTime {
        format: String,
        output: &'static str,
    },
    #[error("`{input}` does not match the date format `{format}`: {reason}")]
    NoMatch {
        input: String,
        format: String,
        reason: String,
    },
    #[error("`{input}` read with the date format `{format}` is outside FHIR's years 1 to 9999")]
    OutOfRange { input: String, format: String },
    #[error("`{input}` does not exist in {zone} (the clocks skip it)")]
    NoSuchLocalTime { input: String, zone: String },
    #[error("`{0}` is not an IANA time zone (such as `Europe/Vienna` or `UTC`)")]
    UnknownZone(String),
}

/// What a format reads.
#[derive(Debug, Clone, Copy, Default)]
struct Fields {
    year: bool,
    month: bool,
    day: bool,
    hour: bool,
    minute: bool,
    offset: bool,
    timestamp: bool,
}

/// A checked format.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Unix { millis: bool },
    Pattern(Fields),
}

fn bad(format: &str, reason: &'static str) -> DateFormatError {
    DateFormatError::BadFormat {
        format: format.to_owned(),
        reason,
    }
}

fn kind(format: &str) -> Result<Kind, DateFormatError> {
    match format {
        "unix" => return Ok(Kind::Unix { millis: false }),
        "unixMillis" => return Ok(Kind::Unix { millis: true }),
        _ => {}
    }
    if format.len() > 200 {
        return Err(bad(format, "longer than 200 bytes"));
    }
    let mut f = Fields::default();
    for item in StrftimeItems::new(format) {
        match item {
            Item::Error => return Err(bad(format, "an unknown or incomplete `%` specifier")),
            Item::Numeric(n, _) => match n {
                Numeric::Year | Numeric::YearDiv100 | Numeric::YearMod100 => f.year = true,
                Numeric::Month => f.month = true,
                Numeric::Day => f.day = true,
                Numeric::Ordinal => {
                    f.month = true;
                    f.day = true;
                }
                Numeric::Hour | Numeric::Hour12 => f.hour = true,
                Numeric::Minute => f.minute = true,
                Numeric::Timestamp => f.timestamp = true,
                Numeric::Second | Numeric::Nanosecond => {}
                _ => {
                    return Err(bad(
                        format,
                        "ISO weeks, quarters and week days cannot make a date",
                    ));
                }
            },
            Item::Fixed(x) => match x {
                Fixed::ShortMonthName | Fixed::LongMonthName => f.month = true,
                Fixed::TimezoneOffset
                | Fixed::TimezoneOffsetZ
                | Fixed::TimezoneOffsetColon
                | Fixed::TimezoneOffsetColonZ
                | Fixed::TimezoneOffsetDoubleColon
                | Fixed::TimezoneOffsetTripleColon => f.offset = true,
                Fixed::RFC2822 | Fixed::RFC3339 => {
                    f = Fields {
                        year: true,
                        month: true,
                        day: true,
                        hour: true,
                        minute: true,
                        offset: true,
                        timestamp: false,
                    }
                }
                Fixed::TimezoneName => {
                    return Err(bad(
                        format,
                        "`%Z` cannot be read; use `%z` or a zone argument",
                    ));
                }
                _ => {}
            },
            _ => {}
        }
    }
    if f.timestamp {
        return Ok(Kind::Pattern(f));
    }
    let missing = |field| {
        Err(DateFormatError::Missing {
            format: format.to_owned(),
            field,
        })
    };
    if !f.year {
        return missing("year (`%Y`)");
    }
    if f.day && !f.month {
        return missing("month (`%m` or `%b`)");
    }
    if (f.hour || f.minute) && !f.day {
        return missing("day (`%d`)");
    }
    if f.hour != f.minute {
        return missing(if f.hour {
            "minute (`%M`)"
        } else {
            "hour (`%H`)"
        });
    }
    if f.offset && !f.hour {
        return missing("time (`%H:%M`) for its offset");
    }
    Ok(Kind::Pattern(f))
}

/// Checks a format for `output`, as definitions are checked.
pub fn check(format: &str, output: Output) -> Result<(), DateFormatError> {
    let has_time = match kind(format)? {
        Kind::Unix { .. } => true,
        Kind::Pattern(f) => f.hour || f.timestamp,
    };
    if output == Output::Instant && !has_time {
        return Err(DateFormatError::NoTime {
            format: format.to_owned(),
            output: output.name(),
        });
    }
    Ok(())
}

/// A zone by its IANA name.
pub fn zone(name: &str) -> Result<Tz, DateFormatError> {
    name.parse()
        .map_err(|_| DateFormatError::UnknownZone(crate::model::template::text::shown(name)))
}

/// What a format read: a point in time (with the offset to write it in), a local time, or a
/// date of a precision.
enum Reading {
    At(DateTime<FixedOffset>, bool),
    Local(NaiveDateTime),
    Date(NaiveDate),
    Month(i32, u32),
    Year(i32),
}

/// Reads `input` with `format` and writes it as `output`. A local time (a format without an
/// offset) is read in `zone` (UTC, written `Z`, when `None`); a time with an offset keeps it;
/// an epoch time is written in `zone`'s offset, else in UTC. A `dateTime` or `date` has the
/// precision of the format (a year, a month, a day, or a time with seconds); an `instant`
/// needs a time.
pub fn parse_with(
    input: &str,
    format: &str,
    zone: Option<Tz>,
    output: Output,
) -> Result<String, DateFormatError> {
    check(format, output)?;
    let s = input.trim();
    let no_match = |reason: String| DateFormatError::NoMatch {
        input: crate::model::template::text::shown(s),
        format: format.to_owned(),
        reason,
    };
    let reading = match kind(format)? {
        Kind::Unix { millis } => Reading::At(
            match epoch(s, millis) {
                Epoch::At(t) => t,
                // A whole number too large for any calendar: outside FHIR's years.
                Epoch::OutOfRange => {
                    return Err(DateFormatError::OutOfRange {
                        input: crate::model::template::text::shown(s),
                        format: format.to_owned(),
                    });
                }
                Epoch::NotANumber => {
                    return Err(no_match(format!(
                        "expected a whole number of {} since 1970",
                        if millis { "milliseconds" } else { "seconds" }
                    )));
                }
            },
            false,
        ),
        Kind::Pattern(f) => {
            let mut p = Parsed::new();
            parse(&mut p, s, StrftimeItems::new(format)).map_err(|e| no_match(e.to_string()))?;
            if f.timestamp {
                let t = p
                    .to_datetime_with_timezone(&Utc)
                    .map_err(|e| no_match(e.to_string()))?;
                Reading::At(t.fixed_offset(), false)
            } else if f.hour {
                let local = p
                    .to_naive_date()
                    .and_then(|d| p.to_naive_time().map(|t| d.and_time(t)))
                    .map_err(|e| no_match(e.to_string()))?;
                match p.offset() {
                    Some(secs) => {
                        let off = FixedOffset::east_opt(secs)
                            .ok_or_else(|| no_match("the offset is out of range".into()))?;
                        let t = off
                            .from_local_datetime(&local)
                            .single()
                            .ok_or_else(|| no_match("input is out of range".into()))?;
                        Reading::At(t, true)
                    }
                    None => Reading::Local(local),
                }
            } else if f.day {
                Reading::Date(p.to_naive_date().map_err(|e| no_match(e.to_string()))?)
            } else {
                let year = year_of(&p).ok_or_else(|| no_match("no year".into()))?;
                match p.month() {
                    Some(m) => Reading::Month(year, m),
                    None => Reading::Year(year),
                }
            }
        }
    };
    write(reading, s, format, zone, output)
}

fn year_of(p: &Parsed) -> Option<i32> {
    p.year().or_else(|| {
        // A two-digit year alone (`%y`): 70-99 are 19xx, 00-69 are 20xx, as chrono reads it
        // in a full date, so `%m/%y` and `%d.%m.%y` read `69` as the same year.
        let m = p.year_mod_100()?;
        let c = p.year_div_100().unwrap_or(if m < 70 { 20 } else { 19 });
        Some(c * 100 + m)
    })
}

/// What a Unix time reads as.
enum Epoch {
    At(DateTime<FixedOffset>),
    /// A whole number, but of a time no calendar holds.
    OutOfRange,
    NotANumber,
}

fn epoch(s: &str, millis: bool) -> Epoch {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Epoch::NotANumber;
    }
    // 16 digits of seconds or milliseconds are past year 9999 already.
    let Some(n) = (digits.len() <= 16)
        .then(|| s.parse::<i64>().ok())
        .flatten()
    else {
        return Epoch::OutOfRange;
    };
    let t = if millis {
        DateTime::from_timestamp_millis(n)
    } else {
        DateTime::from_timestamp(n, 0)
    };
    t.map_or(Epoch::OutOfRange, |t| Epoch::At(t.fixed_offset()))
}

fn write(
    reading: Reading,
    input: &str,
    format: &str,
    zone: Option<Tz>,
    output: Output,
) -> Result<String, DateFormatError> {
    let out_of_range = || DateFormatError::OutOfRange {
        input: crate::model::template::text::shown(input),
        format: format.to_owned(),
    };
    let in_range = |y: i32| (1..=9999).contains(&y);
    // A point in time, written with its own offset or the zone's.
    let stamp: DateTime<FixedOffset>;
    let mut utc_z = false;
    match reading {
        Reading::Year(y) if in_range(y) => return Ok(format!("{y:04}")),
        Reading::Month(y, m) if in_range(y) => return Ok(format!("{y:04}-{m:02}")),
        Reading::Date(d) if in_range(d.year()) => return Ok(d.format("%Y-%m-%d").to_string()),
        Reading::Year(_) | Reading::Month(..) | Reading::Date(_) => return Err(out_of_range()),
        Reading::At(t, own_offset) => {
            stamp = match (own_offset, zone) {
                (true, _) => t,
                (false, Some(z)) => t.with_timezone(&z).fixed_offset(),
                (false, None) => {
                    utc_z = true;
                    t
                }
            }
        }
        Reading::Local(local) => match zone {
            None => {
                utc_z = true;
                stamp = Utc.from_utc_datetime(&local).fixed_offset();
            }
            Some(z) => {
                stamp = match z.from_local_datetime(&local) {
                    LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.fixed_offset(),
                    LocalResult::None => {
                        return Err(DateFormatError::NoSuchLocalTime {
                            input: crate::model::template::text::shown(input),
                            zone: z.name().to_owned(),
                        });
                    }
                }
            }
        },
    }
    if !in_range(stamp.year()) {
        return Err(out_of_range());
    }
    Ok(match output {
        Output::Date => stamp.date_naive().format("%Y-%m-%d").to_string(),
        Output::DateTime | Output::Instant => stamp.to_rfc3339_opts(SecondsFormat::AutoSi, utc_z),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(input: &str, format: &str, output: Output) -> Result<String, DateFormatError> {
        parse_with(input, format, None, output)
    }

    #[test]
    fn the_formats_real_sources_write() {
        let vienna: Tz = "Europe/Vienna".parse().expect("a value");
        assert_eq!(
            p("20240105213000+0100", "%Y%m%d%H%M%S%z", Output::DateTime).expect("a value"),
            "2024-01-05T21:30:00+01:00"
        );
        assert_eq!(
            p("20240105213000+0100", "%Y%m%d%H%M%S%z", Output::Instant).expect("a value"),
            "2024-01-05T21:30:00+01:00"
        );
        assert_eq!(
            p("05.01.2024", "%d.%m.%Y", Output::Date).expect("a value"),
            "2024-01-05"
        );
        assert_eq!(
            p("05/01/2024", "%d/%m/%Y", Output::DateTime).expect("a value"),
            "2024-01-05"
        );
        assert_eq!(
            p("5 Jan 2024", "%d %b %Y", Output::Date).expect("a value"),
            "2024-01-05"
        );
        assert_eq!(
            p("01/2024", "%m/%Y", Output::DateTime).expect("a value"),
            "2024-01"
        );
        assert_eq!(p("2024", "%Y", Output::Date).expect("a value"), "2024");
        // Unix seconds and milliseconds written as text: UTC, or the declared zone's offset.
        assert_eq!(
            p("1704490200", "unix", Output::Instant).expect("a value"),
            "2024-01-05T21:30:00Z"
        );
        assert_eq!(
            parse_with(
                "1704490200123",
                "unixMillis",
                Some(vienna),
                Output::DateTime
            )
            .expect("a value"),
            "2024-01-05T22:30:00.123+01:00"
        );
        assert_eq!(
            parse_with("1704495600", "unix", Some(vienna), Output::Date).expect("a value"),
            "2024-01-06"
        );
        // A local time in a declared zone, in summer and winter.
        assert_eq!(
            parse_with(
                "05.07.2024 08:30",
                "%d.%m.%Y %H:%M",
                Some(vienna),
                Output::Instant
            )
            .expect("a value"),
            "2024-07-05T08:30:00+02:00"
        );
        assert_eq!(
            p("05.01.2024 08:30", "%d.%m.%Y %H:%M", Output::DateTime).expect("a value"),
            "2024-01-05T08:30:00Z"
        );
    }

    #[test]
    fn bad_input_names_the_format() {
        let e = p("32.01.2024", "%d.%m.%Y", Output::Date).expect_err("an error");
        assert!(e.to_string().contains("`%d.%m.%Y`"), "{e}");
        let e = p("2024-01-05", "%d.%m.%Y", Output::Date).expect_err("an error");
        assert!(matches!(e, DateFormatError::NoMatch { .. }), "{e}");
        let e = p("12x", "unix", Output::Instant).expect_err("an error");
        assert!(e.to_string().contains("seconds since 1970"), "{e}");
        // Out of range: an epoch past year 9999, a year 0.
        let e = p("999999999999", "unix", Output::DateTime).expect_err("an error");
        assert!(matches!(e, DateFormatError::OutOfRange { .. }), "{e}");
        let e = p("0000", "%Y", Output::Date).expect_err("an error");
        assert!(matches!(e, DateFormatError::OutOfRange { .. }), "{e}");
        assert!(p(&"9".repeat(40), "unixMillis", Output::DateTime).is_err());
        // The hour the clocks skip.
        let vienna: Tz = "Europe/Vienna".parse().expect("a value");
        let e = parse_with(
            "31.03.2024 02:30",
            "%d.%m.%Y %H:%M",
            Some(vienna),
            Output::DateTime,
        )
        .expect_err("an error");
        assert!(matches!(e, DateFormatError::NoSuchLocalTime { .. }), "{e}");
    }

    #[test]
    fn formats_are_checked() {
        assert!(check("%d.%m.%Y", Output::Date).is_ok());
        assert!(matches!(
            check("%d.%m", Output::Date),
            Err(DateFormatError::Missing { .. })
        ));
        assert!(matches!(
            check("%Y-%m-%d %H", Output::DateTime),
            Err(DateFormatError::Missing { .. })
        ));
        assert!(matches!(
            check("%Q", Output::Date),
            Err(DateFormatError::BadFormat { .. })
        ));
        assert!(matches!(
            check("%d.%m.%Y", Output::Instant),
            Err(DateFormatError::NoTime { .. })
        ));
        assert!(check("unix", Output::Instant).is_ok());
        assert!(zone("Mars/Olympus").is_err());
    }
}
