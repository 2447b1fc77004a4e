//! When a job fires.
//!
//! A [`Schedule`] turns "now" into the next fire instant. Every computation is pure:
//! [`Schedule::next_after`] returns the first fire instant *strictly after* the instant it
//! is given, so the trigger loop asks again with the instant it just fired at.
//!
//! | kind | fires at | `next_after(after, anchor)` |
//! |---|---|---|
//! | [`Schedule::Cron`] | the instants of a cron expression in a time zone | see below |
//! | [`Schedule::Every`] | `anchor + k * interval`, k = 0, 1, 2, ... | smallest such instant `> after` (O(1)) |
//! | [`Schedule::Delay`] | the delay after the item's previous completion | `None`; use [`Schedule::next_delay_fire`] |
//! | [`Schedule::At`] | once, at `t` | `t` if `t > after`, else `None` |
//! | [`Schedule::Manual`] | only when triggered | `None` |
//!
//! `Every` works on absolute time (it ignores time zones and DST), has nanosecond
//! resolution (sub-second intervals work), and returns `None` when the result would not
//! fit in a `DateTime<Utc>`. A zero interval is refused by the job validator
//! ([`ScheduleError::ZeroInterval`]); should one reach [`Schedule::next_after`] anyway, it
//! fires at `anchor` only.
//!
//! # Cron expressions
//!
//! Expressions are parsed with the `croner` crate (which supplies the field syntax and its
//! error messages) and compiled once into bit masks; [`CronSchedule::next_after`] then
//! searches without allocating, skipping whole months and years where the expression
//! cannot match. Cron fire instants are whole seconds.
//!
//! An expression has 5, 6 or 7 whitespace-separated fields:
//!
//! | fields | layout | note |
//! |---|---|---|
//! | 5 | `minute hour day-of-month month day-of-week` | fires at second 0 |
//! | 6 | `second minute hour day-of-month month day-of-week` | |
//! | 7 | `second minute hour day-of-month month day-of-week year` | Quartz layout |
//!
//! | field | values | special characters |
//! |---|---|---|
//! | second, minute | 0-59 | `* , - /` |
//! | hour | 0-23 | `* , - /` |
//! | day-of-month | 1-31 | `* , - / ? L W` |
//! | month | 1-12 or `JAN`-`DEC` | `* , - /` |
//! | day-of-week | 0-7 or `SUN`-`SAT` | `* , - / ? L #` and a leading `+` |
//! | year | 1970-2099 | `* , - / ?` |
//!
//! * `a-b` is a range, `a,b` a list, `*/n` and `a-b/n` steps; `a/n` (Quartz) means
//!   `a`, `a+n`, ... up to the end of the field's range.
//! * Month and weekday names are case-insensitive (`jan`, `Mon`, `FRI`) and may be used
//!   in ranges and lists (`MON-FRI`, `JAN,JUL`). Names are only accepted in their own
//!   field.
//! * `?` means the same as `*` (Quartz writes it in the day field it does not use).
//! * Day-of-month: `L` is the last day of the month, `nW` the weekday (Monday to Friday)
//!   nearest to day `n` without leaving the month, `LW` the last weekday of the month.
//!   `L-n` (offset from the last day) is not supported.
//! * Day-of-week: `d#n` is the n-th (1-5) weekday `d` of the month (`MON#2`, `1#2`), `dL`
//!   or `d#L` the last weekday `d` of the month (`5L`, `FRIL`), and `L` on its own means
//!   Saturday, as in Quartz.
//! * When both day-of-month and day-of-week are restricted (neither is `*` or `?`), a day
//!   matches when *either* matches (Vixie cron). A leading `+` on the day-of-week field
//!   (`0 0 1 * +MON`) requires both.
//! * Year: `*` or `?` means every year, without an upper limit. Any other year field limits
//!   the expression to the years listed, which must lie in 1970-2099; `*/n` counts from
//!   1970. After the last listed year the expression no longer fires.
//! * The nicknames `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`
//!   and `@hourly` stand for the usual 5-field expressions.
//!
//! ## Weekday numbers
//!
//! Weekday numbers follow the Unix convention in every layout, including the 7-field
//! Quartz layout: `0` and `7` are Sunday, `1` Monday, ..., `6` Saturday. Quartz numbers
//! weekdays 1 (Sunday) to 7 (Saturday), so a Quartz expression that uses weekday *numbers*
//! means something else here; weekday *names* mean the same everywhere and are the
//! portable choice. (croner offers a Quartz numbering mode; it is not used, so that one
//! expression never changes meaning with its field count.)
//!
//! ## Expressions that never fire
//!
//! An expression whose date fields can never match a real date, such as `0 0 0 30 FEB *`
//! or `0 0 0 29 FEB * 2025`, is refused by [`CronSchedule::parse`] with a reason that says
//! so. (Without a year field, dates repeat every 400 years, so one such period is searched
//! at parse time.) An expression whose listed years are all past is accepted, and
//! [`CronSchedule::next_after`] returns `None` for it; `next_after` never loops without
//! bound.
//!
//! ## Time zones and daylight saving time
//!
//! The expression is matched against the wall clock of an IANA time zone (UTC when none
//! is given). Where the zone's clock jumps, the fire instants are defined as follows. Say
//! the hour field is *restricted* unless it matches every hour of the day (`*`, `0-23`,
//! `*/1`).
//!
//! 1. A matching wall-clock time that occurs once fires at that instant.
//! 2. **Overlap** (clocks go back, so a range of wall-clock times occurs twice): a
//!    matching wall-clock time fires at its *first* occurrence only when the hour field is
//!    restricted, and at *both* occurrences when the hour field matches every hour.
//! 3. **Gap** (clocks go forward, so a range of wall-clock times does not exist): a
//!    matching wall-clock time inside the gap fires at the first instant after the gap
//!    when the hour field is restricted (several matches inside one gap make one fire);
//!    it is skipped when the hour field matches every hour.
//!
//! So a schedule for particular hours ("at 02:30") runs once on every matching day,
//! whatever the clock does, while an every-hour schedule ("every 15 minutes", "at minute
//! 30 of every hour") follows elapsed time and runs as many times as the day has hours
//! (23 or 25 times for hourly). Examples in `Europe/Berlin`, where 2024-03-31 jumps from
//! 02:00 CET to 03:00 CEST and 2024-10-27 goes back from 03:00 CEST to 02:00 CET:
//!
//! * `0 30 2 * * *` fires on 2024-03-31 at 03:00 CEST (`01:00Z`), and on 2024-10-27 once,
//!   at 02:30 CEST (`00:30Z`).
//! * `0 * 2 * * *` (every minute of hour 2) fires once on 2024-03-31, at 03:00 CEST, and
//!   60 times on 2024-10-27, from 02:00 to 02:59 CEST.
//! * `0 */15 * * * *` fires every 15 minutes of elapsed time through both transitions:
//!   01:45 CET, then 03:00 CEST; and 02:45 CEST, 02:00 CET, 02:15 CET, ...
//! * `0 30 * * * *` fires at 01:30 CET and then 03:30 CEST on 2024-03-31, and at 02:30
//!   CEST and 02:30 CET on 2024-10-27.
//!
//! In `America/New_York` the same rules move `0 30 2 * * *` to 03:00 EDT on 2024-03-10 and
//! run `0 30 1 * * *` once, at 01:30 EDT, on 2024-11-03.
//!
//! (croner's own search applies the "once" and "after the gap" treatment only when the
//! second, minute and hour fields are all single values, so it would run `0 0,30 2 * * *`
//! twice in an overlap and never in a gap. That is why the search here is our own, with
//! croner used for parsing and day matching only.)

use std::sync::Arc;
use std::time::Duration;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeDelta, TimeZone,
    Timelike, Utc,
};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};

/// Why a schedule was refused. Messages do not name the job field; the job
/// validator prefixes them with `cron:`, `tz:`, `every:` and so on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression could not be parsed.
    #[error("invalid cron expression {expr:?}: {reason}")]
    Cron {
        /// The expression as given.
        expr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The time zone is not an IANA zone name.
    #[error("unknown time zone {0:?} (expected an IANA name such as \"Europe/Berlin\" or \"UTC\")")]
    TimeZone(String),
    /// A fixed rate or delay of zero.
    #[error("must be greater than zero")]
    ZeroInterval,
}

/// A parsed cron expression with its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expr: String,
    tz: Tz,
    /// The compiled expression, shared by clones.
    compiled: Arc<Compiled>,
}

impl CronSchedule {
    /// Parse `expr` (5, 6 or 7 fields) in zone `tz` (UTC when `None`).
    ///
    /// See the [module documentation](self) for the syntax. An expression that can never
    /// fire is refused.
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<Self, ScheduleError> {
        let tz = match tz {
            Some(name) => parse_tz(name)?,
            None => Tz::UTC,
        };
        let compiled = Compiled::new(expr).map_err(|reason| ScheduleError::Cron {
            expr: expr.to_owned(),
            reason,
        })?;
        Ok(Self {
            expr: expr.to_owned(),
            tz,
            compiled: Arc::new(compiled),
        })
    }

    /// The expression as given.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The first fire instant strictly after `after`, or `None` if there is none.
    ///
    /// DST transitions are handled as described in the [module documentation](self).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local_after = local_wall_clock(self.tz, after)?;
        // Cron instants are whole seconds: the first wall-clock second after `after`.
        let start = local_after
            .with_nanosecond(0)?
            .checked_add_signed(ONE_SECOND)?;
        let first = self.walk(start, after);
        if !self.compiled.all_hours {
            return first;
        }

        // With every hour matching, the second pass of a repeated range fires too. When
        // `after` is on the first pass, the walk above (which moves forwards on the wall
        // clock) cannot see the part of the second pass whose wall-clock times lie before
        // `after`'s, so walk that pass separately from its start.
        let LocalResult::Ambiguous(earlier, later) = self.tz.from_local_datetime(&local_after)
        else {
            return first;
        };
        let later = later.with_timezone(&Utc);
        if after >= later {
            // `after` is on the second pass already.
            return first;
        }
        let Some(change) = transition(self.tz, earlier.timestamp(), later.timestamp()) else {
            return first;
        };
        if first.is_some_and(|at| at.timestamp() < change) {
            return first;
        }
        let second_pass_start = wall_clock(change, offset_at(self.tz, change)?)?;
        match (first, self.walk(second_pass_start, after)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Walks matching wall-clock times from `from` (inclusive) and returns the first
    /// fire instant after `after` that they produce.
    ///
    /// The caller starts the walk at a wall-clock time whose instants are not far behind
    /// `after`, so the loop runs once or twice except next to a clock change.
    fn walk(&self, mut from: NaiveDateTime, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let compiled = &*self.compiled;
        for _ in 0..MAX_WALK_STEPS {
            let wall = compiled.next_wall(from)?;
            let next_second = wall.checked_add_signed(ONE_SECOND)?;
            match self.tz.from_local_datetime(&wall) {
                LocalResult::Single(at) => {
                    let at = at.with_timezone(&Utc);
                    if at > after {
                        return Some(at);
                    }
                    from = next_second;
                }
                LocalResult::Ambiguous(earlier, later) => {
                    let early_offset = i64::from(earlier.offset().fix().local_minus_utc());
                    let (earlier, later) = (earlier.with_timezone(&Utc), later.with_timezone(&Utc));
                    if earlier > after {
                        return Some(earlier);
                    }
                    if compiled.all_hours && later > after {
                        return Some(later);
                    }
                    // Every first occurrence in this repeated range is behind `after`, and
                    // second occurrences do not fire: resume where the range ends.
                    from = match transition(self.tz, earlier.timestamp(), later.timestamp()) {
                        Some(change) => next_second.max(wall_clock(change, early_offset)?),
                        None => next_second,
                    };
                }
                LocalResult::None => {
                    let resume = gap_end(self.tz, wall)?;
                    if !compiled.all_hours && resume > after {
                        return Some(resume);
                    }
                    from = next_second.max(local_wall_clock(self.tz, resume)?);
                }
            }
        }
        None
    }
}

/// Parse an IANA time zone name.
pub fn parse_tz(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>()
        .map_err(|_| ScheduleError::TimeZone(name.to_owned()))
}

/// A job's schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Cron expression in a time zone.
    Cron(CronSchedule),
    /// Fixed rate: fires at `anchor + k * interval`, k = 0, 1, 2, ...
    Every(Duration),
    /// Fixed delay after the item's previous completion.
    Delay(Duration),
    /// Once, at this instant.
    At(DateTime<Utc>),
    /// Only when triggered through the API, the CLI or the console.
    Manual,
}

impl Schedule {
    /// The first fire instant strictly after `after`. `anchor` is the job's persisted
    /// start instant, used by `Every` only. `Delay` and `Manual` have no calendar
    /// and return `None` (see [`Schedule::next_delay_fire`]).
    pub fn next_after(&self, after: DateTime<Utc>, anchor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron(cron) => cron.next_after(after),
            Self::Every(interval) => every_next_after(*interval, after, anchor),
            Self::At(at) => (*at > after).then_some(*at),
            Self::Delay(_) | Self::Manual => None,
        }
    }

    /// For `Delay`: the fire that follows a completion at `completed`.
    pub fn next_delay_fire(&self, completed: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Delay(delay) => completed.checked_add_signed(TimeDelta::from_std(*delay).ok()?),
            Self::Cron(_) | Self::Every(_) | Self::At(_) | Self::Manual => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fixed rate

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// The smallest `anchor + k * interval` (k >= 0) strictly after `after`.
fn every_next_after(
    interval: Duration,
    after: DateTime<Utc>,
    anchor: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if anchor > after {
        return Some(anchor);
    }
    let step = i128::try_from(interval.as_nanos()).ok()?;
    if step == 0 {
        return None;
    }
    let anchor_nanos = total_nanos(anchor);
    // `after >= anchor`, so this is not negative.
    let elapsed = total_nanos(after) - anchor_nanos;
    let periods = elapsed / step + 1;
    from_total_nanos(anchor_nanos.checked_add(periods.checked_mul(step)?)?)
}

fn total_nanos(at: DateTime<Utc>) -> i128 {
    i128::from(at.timestamp()) * NANOS_PER_SECOND + i128::from(at.timestamp_subsec_nanos())
}

fn from_total_nanos(nanos: i128) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(nanos.div_euclid(NANOS_PER_SECOND)).ok()?;
    let subsec = u32::try_from(nanos.rem_euclid(NANOS_PER_SECOND)).ok()?;
    DateTime::from_timestamp(secs, subsec)
}

// ---------------------------------------------------------------------------------------
// Time zone helpers. Instants are whole seconds since the Unix epoch.

const ONE_SECOND: TimeDelta = TimeDelta::seconds(1);

/// Bound on the iterations of [`CronSchedule::walk`]. A walk needs at most three steps
/// next to one clock change; this only guards against pathological zone data.
const MAX_WALK_STEPS: usize = 16;

/// Larger than the magnitude of any UTC offset a zone has used.
const MAX_OFFSET_SECONDS: i64 = 16 * 3600;

/// The zone's UTC offset, in seconds, at instant `secs`.
fn offset_at(tz: Tz, secs: i64) -> Option<i64> {
    let utc = DateTime::from_timestamp(secs, 0)?.naive_utc();
    Some(i64::from(
        tz.offset_from_utc_datetime(&utc).fix().local_minus_utc(),
    ))
}

/// The zone's wall-clock time at `at`, or `None` at the edges of the representable range
/// (where `DateTime::naive_local` would panic).
fn local_wall_clock(tz: Tz, at: DateTime<Utc>) -> Option<NaiveDateTime> {
    let utc = at.naive_utc();
    utc.checked_add_offset(tz.offset_from_utc_datetime(&utc).fix())
}

/// The wall-clock time at instant `secs` under UTC offset `offset`.
fn wall_clock(secs: i64, offset: i64) -> Option<NaiveDateTime> {
    Some(DateTime::from_timestamp(secs.checked_add(offset)?, 0)?.naive_utc())
}

/// The first instant in `(lo, hi]` whose offset differs from the offset at `lo`, when
/// the offsets at `lo` and `hi` differ (one clock change between them).
fn transition(tz: Tz, mut lo: i64, mut hi: i64) -> Option<i64> {
    let before = offset_at(tz, lo)?;
    if offset_at(tz, hi)? == before {
        return None;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset_at(tz, mid)? == before {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(hi)
}

/// The first instant after the gap that contains the (non-existent) wall-clock time
/// `wall`: the first instant whose wall-clock time is later than `wall`.
fn gap_end(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    let target = wall.and_utc().timestamp();
    let later_than_target =
        |secs: i64| -> Option<bool> { Some(secs.checked_add(offset_at(tz, secs)?)? > target) };
    let mut lo = target.checked_sub(MAX_OFFSET_SECONDS)?;
    let mut hi = target.checked_add(MAX_OFFSET_SECONDS)?;
    if later_than_target(lo)? || !later_than_target(hi)? {
        return None;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if later_than_target(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

// ---------------------------------------------------------------------------------------
// Compiled cron expressions

const FIRST_YEAR: i32 = 1970;
const LAST_YEAR: i32 = 2099;

/// Dates repeat every 400 years (146,097 days, a whole number of weeks), so an
/// expression without a year field that matches no date in 400 years matches none ever.
const CALENDAR_CYCLE_YEARS: i32 = 400;

/// The names of the fields in the order croner receives them.
const FIELD_NAMES: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];

const FIELD_RANGES: [&str; 6] = [
    "0-59",
    "0-59",
    "0-23",
    "1-31, L, LW, nW, ?",
    "1-12 or JAN-DEC",
    "0-7 (0 and 7 are Sunday) or SUN-SAT, L, d#n, dL, ?",
];

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A cron expression reduced to bit masks.
#[derive(Debug)]
struct Compiled {
    /// Bit `s` set: second `s` matches.
    seconds: u64,
    /// Bit `m` set: minute `m` matches.
    minutes: u64,
    /// Bit `h` set: hour `h` matches.
    hours: u32,
    /// Bit `m` set: month `m` (1-12) matches.
    months: u16,
    /// The matching days of a month, by the month's shape: index
    /// `(length - 28) * 7 + weekday of the 1st (0 = Sunday)`, bit `d` set: day `d`
    /// matches. Day-of-month, day-of-week, `L`, `W` and `#` depend on nothing else.
    days: [u32; 28],
    /// The allowed years, or `None` for every year.
    years: Option<YearSet>,
    /// The hour field matches every hour (see the DST rules).
    all_hours: bool,
}

impl Compiled {
    fn new(expr: &str) -> Result<Self, String> {
        let trimmed = expr.trim();
        if trimmed.is_empty() {
            return Err("the expression is empty".to_owned());
        }
        let expanded = if trimmed.starts_with('@') {
            expand_nickname(trimmed)?
        } else {
            trimmed
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (croner_fields, year_field): ([&str; 6], Option<&str>) = match fields[..] {
            [min, hour, dom, month, dow] => (["0", min, hour, dom, month, dow], None),
            [sec, min, hour, dom, month, dow] => ([sec, min, hour, dom, month, dow], None),
            [sec, min, hour, dom, month, dow, year] => {
                ([sec, min, hour, dom, month, dow], Some(year))
            }
            _ => return Err(format!("expected 5, 6 or 7 fields, got {}", fields.len())),
        };
        for (index, field) in croner_fields.iter().enumerate() {
            check_field_text(index, field)?;
        }
        let years = match year_field {
            Some(field) => parse_years(field)?,
            None => None,
        };

        let parser = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            .sloppy_ranges(true)
            .build();
        let mut prepared = croner_fields.map(str::to_owned);
        prepared[5] = quartz_last_saturday(croner_fields[5]);
        let cron = parser
            .parse(&prepared.join(" "))
            .map_err(|error| describe_croner_error(&parser, &croner_fields, &prepared, &error))?;
        let pattern = &cron.pattern;

        let seconds = mask(&pattern.seconds.values());
        let minutes = mask(&pattern.minutes.values());
        let hours = mask(&pattern.hours.values());
        let months = mask(&pattern.months.values());
        let (Ok(hours), Ok(months)) = (u32::try_from(hours), u16::try_from(months)) else {
            return Err("internal error: hour or month out of range".to_owned());
        };
        if seconds == 0 || minutes == 0 || hours == 0 || months == 0 {
            return Err("a field matches no value".to_owned());
        }

        let mut days = [u32::MAX; 28];
        if !(pattern.is_dom_wildcard() && pattern.is_dow_wildcard()) {
            for (shape, day_mask) in days.iter_mut().enumerate() {
                *day_mask = day_mask_for_shape(pattern, shape)?;
            }
        }

        let compiled = Self {
            seconds,
            minutes,
            hours,
            months,
            days,
            years,
            all_hours: hours == (1 << 24) - 1,
        };
        compiled.check_fires()?;
        Ok(compiled)
    }

    /// Refuses an expression that no date can match.
    fn check_fires(&self) -> Result<(), String> {
        let (first_year, what) = match &self.years {
            Some(years) => (
                years.first().unwrap_or(FIRST_YEAR),
                "in the years it allows",
            ),
            None => (FIRST_YEAR, "in any year"),
        };
        let start =
            NaiveDate::from_ymd_opt(first_year, 1, 1).and_then(|date| date.and_hms_opt(0, 0, 0));
        match start.and_then(|start| self.next_wall(start)) {
            Some(_) => Ok(()),
            None => Err(format!(
                "the expression never fires: no date {what} matches its day-of-month, month \
                 and day-of-week fields"
            )),
        }
    }

    /// The first wall-clock time at or after `from` (whole seconds) that matches, or
    /// `None` if there is none within the allowed years (or the next 400 years).
    fn next_wall(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut date = from.date();
        let last_year = match &self.years {
            Some(years) => years.last()?,
            None => date.year().checked_add(CALENDAR_CYCLE_YEARS)?,
        };
        // The earliest time of day still allowed on `date`.
        let mut floor = (from.hour(), from.minute(), from.second());
        loop {
            let year = date.year();
            if year > last_year {
                return None;
            }
            if let Some(years) = &self.years
                && !years.contains(year)
            {
                date = NaiveDate::from_ymd_opt(years.next_from(year)?, 1, 1)?;
                floor = (0, 0, 0);
                continue;
            }
            let month = date.month();
            if self.months & (1 << month) == 0 {
                date = match next_bit(u64::from(self.months), month + 1) {
                    Some(next) => NaiveDate::from_ymd_opt(year, next, 1)?,
                    None => NaiveDate::from_ymd_opt(year.checked_add(1)?, 1, 1)?,
                };
                floor = (0, 0, 0);
                continue;
            }
            let day = date.day();
            let length = days_in_month(year, month);
            let first_weekday = (date.weekday().num_days_from_sunday() + 35 - (day - 1)) % 7;
            let shape = ((length - 28) * 7 + first_weekday) as usize;
            let day_mask = self.days.get(shape).copied().unwrap_or(0);
            let Some(next_day) = next_bit(u64::from(day_mask), day).filter(|&d| d <= length) else {
                date = first_of_next_month(year, month)?;
                floor = (0, 0, 0);
                continue;
            };
            if next_day != day {
                date = NaiveDate::from_ymd_opt(year, month, next_day)?;
                floor = (0, 0, 0);
            }
            if let Some((hour, minute, second)) = self.first_time(floor) {
                return date.and_hms_opt(hour, minute, second);
            }
            date = date.succ_opt()?;
            floor = (0, 0, 0);
        }
    }

    /// The first matching time of day at or after `floor`, if any.
    fn first_time(&self, floor: (u32, u32, u32)) -> Option<(u32, u32, u32)> {
        let (hour, minute, second) = floor;
        let first_minute = self.minutes.trailing_zeros();
        let first_second = self.seconds.trailing_zeros();
        let next_hour = next_bit(u64::from(self.hours), hour)?;
        if next_hour > hour {
            return Some((next_hour, first_minute, first_second));
        }
        if let Some(next_minute) = next_bit(self.minutes, minute) {
            if next_minute > minute {
                return Some((hour, next_minute, first_second));
            }
            if let Some(next_second) = next_bit(self.seconds, second) {
                return Some((hour, minute, next_second));
            }
            if let Some(next_minute) = next_bit(self.minutes, minute + 1) {
                return Some((hour, next_minute, first_second));
            }
        }
        let next_hour = next_bit(u64::from(self.hours), hour + 1)?;
        Some((next_hour, first_minute, first_second))
    }
}

/// The set bit of `mask` at or above `from`, lowest first.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = mask & (u64::MAX << from);
    (rest != 0).then(|| rest.trailing_zeros())
}

fn mask(values: &[u16]) -> u64 {
    values
        .iter()
        .filter(|&&value| value < 64)
        .fold(0, |mask, &value| mask | (1 << value))
}

fn is_leap_year(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 31,
    }
}

fn first_of_next_month(year: i32, month: u32) -> Option<NaiveDate> {
    if month >= 12 {
        NaiveDate::from_ymd_opt(year.checked_add(1)?, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    }
}

/// The matching days of a month of shape `shape` (see [`Compiled::days`]), asked of croner.
fn day_mask_for_shape(pattern: &croner::CronPattern, shape: usize) -> Result<u32, String> {
    let (length, first_weekday) = ((shape / 7) as u32 + 28, (shape % 7) as u32);
    // Any month of that length will do: croner reads only the length from it, and the
    // weekday is passed in.
    let (year, month) = match length {
        28 => (2023, 2),
        29 => (2024, 2),
        30 => (2024, 4),
        _ => (2024, 1),
    };
    let mut day_mask = 0;
    for day in 1..=length {
        let weekday = croner::Weekday::from_days_from_sunday((first_weekday + day - 1) % 7);
        if pattern
            .day_match(year, month, day, weekday)
            .map_err(|error| format!("internal error matching days: {error}"))?
        {
            day_mask |= 1 << day;
        }
    }
    Ok(day_mask)
}

fn expand_nickname(nickname: &str) -> Result<&'static str, String> {
    Ok(match nickname.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            return Err(format!(
                "unknown nickname {nickname:?} (expected @yearly, @annually, @monthly, \
                 @weekly, @daily, @midnight or @hourly)"
            ));
        }
    })
}

/// Checks the characters and names of field `index` (croner order) before croner sees
/// it: croner replaces names anywhere in the expression, so `MON` in the month field
/// would silently mean January.
fn check_field_text(index: usize, field: &str) -> Result<(), String> {
    let name = FIELD_NAMES[index];
    let extra: &[char] = match index {
        3 => &['?'],
        5 => &['?', '#', '+'],
        _ => &[],
    };
    if let Some(bad) = field
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "*,-/".contains(c) || extra.contains(&c)))
    {
        return Err(format!(
            "{name} field {field:?}: unexpected character {bad:?} (allowed: {})",
            FIELD_RANGES[index]
        ));
    }
    for word in field
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|word| !word.is_empty())
    {
        let upper = word.to_ascii_uppercase();
        let known = match index {
            3 => matches!(upper.as_str(), "L" | "W" | "LW"),
            4 => MONTH_NAMES.contains(&upper.as_str()),
            5 => {
                let day = upper.strip_suffix('L').unwrap_or(&upper);
                upper == "L" || WEEKDAY_NAMES.contains(&day)
            }
            _ => false,
        };
        if !known {
            let hint = match index {
                3 => "only L, W and LW are letters allowed here",
                4 => "month names are JAN-DEC",
                5 => "weekday names are SUN-SAT; L and #",
                _ => "only numbers are allowed here",
            };
            return Err(format!(
                "{name} field {field:?}: unexpected {word:?} ({hint})"
            ));
        }
    }
    if index == 3
        && field
            .split(',')
            .any(|part| part.starts_with("L-") || part.starts_with("l-"))
    {
        return Err(format!(
            "{name} field {field:?}: offsets from the last day of the month (L-n) are not supported"
        ));
    }
    Ok(())
}

/// Quartz reads a lone `L` in the day-of-week field as Saturday; croner ignores it.
fn quartz_last_saturday(dow: &str) -> String {
    let (plus, rest) = match dow.strip_prefix('+') {
        Some(rest) => ("+", rest),
        None => ("", dow),
    };
    let parts: Vec<&str> = rest
        .split(',')
        .map(|part| {
            if part.eq_ignore_ascii_case("L") {
                "6"
            } else {
                part
            }
        })
        .collect();
    format!("{plus}{}", parts.join(","))
}

/// Turns a croner error into a reason that names the offending field when one field
/// alone is at fault.
fn describe_croner_error(
    parser: &CronParser,
    original: &[&str; 6],
    prepared: &[String; 6],
    error: &croner::errors::CronError,
) -> String {
    for index in 0..6 {
        let mut probe = ["*"; 6];
        probe[index] = &prepared[index];
        if let Err(field_error) = parser.parse(&probe.join(" ")) {
            return format!(
                "{} field {:?}: {} (allowed: {})",
                FIELD_NAMES[index],
                original[index],
                croner_message(&field_error),
                FIELD_RANGES[index]
            );
        }
    }
    croner_message(error)
}

fn croner_message(error: &croner::errors::CronError) -> String {
    use croner::errors::CronError;
    let message = match error {
        CronError::ComponentError(message)
        | CronError::InvalidPattern(message)
        | CronError::IllegalCharacters(message) => message.clone(),
        other => other.to_string(),
    };
    message.trim_end_matches('.').to_lowercase()
}

/// A set of years in 1970-2099.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct YearSet {
    bits: [u64; 3],
}

impl YearSet {
    fn insert(&mut self, year: i32) {
        if let Some((word, bit)) = Self::position(year) {
            self.bits[word] |= 1 << bit;
        }
    }

    fn contains(&self, year: i32) -> bool {
        Self::position(year).is_some_and(|(word, bit)| self.bits[word] & (1 << bit) != 0)
    }

    fn position(year: i32) -> Option<(usize, u32)> {
        if !(FIRST_YEAR..=LAST_YEAR).contains(&year) {
            return None;
        }
        let index = (year - FIRST_YEAR) as u32;
        Some(((index / 64) as usize, index % 64))
    }

    /// The first year in the set at or after `year`.
    fn next_from(&self, year: i32) -> Option<i32> {
        let (mut word, bit) = Self::position(year.max(FIRST_YEAR))?;
        let mut rest = self.bits[word] & (u64::MAX << bit);
        while rest == 0 {
            word += 1;
            rest = *self.bits.get(word)?;
        }
        Some(FIRST_YEAR + (word * 64) as i32 + rest.trailing_zeros() as i32)
    }

    fn first(&self) -> Option<i32> {
        self.next_from(FIRST_YEAR)
    }

    fn last(&self) -> Option<i32> {
        let word = self.bits.iter().rposition(|&bits| bits != 0)?;
        let bit = 63 - self.bits[word].leading_zeros();
        Some(FIRST_YEAR + (word * 64) as i32 + bit as i32)
    }
}

/// Parses the year field: `*` or `?` (every year, `None`), or a list of years, ranges
/// and steps within 1970-2099.
fn parse_years(field: &str) -> Result<Option<YearSet>, String> {
    if field == "*" || field == "?" {
        return Ok(None);
    }
    let fail = |why: String| format!("year field {field:?}: {why} (allowed: 1970-2099, * , - / ?)");
    let year = |text: &str| -> Result<i32, String> {
        let value: i32 = text
            .parse()
            .map_err(|_| fail(format!("{text:?} is not a year")))?;
        if !(FIRST_YEAR..=LAST_YEAR).contains(&value) {
            return Err(fail(format!("year {value} is outside 1970-2099")));
        }
        Ok(value)
    };
    let mut years = YearSet::default();
    for part in field.split(',') {
        if part.is_empty() {
            return Err(fail("empty list item".to_owned()));
        }
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: usize = step
                    .parse()
                    .ok()
                    .filter(|&step| step > 0)
                    .ok_or_else(|| fail(format!("step {step:?} is not a positive number")))?;
                (range, Some(step))
            }
            None => (part, None),
        };
        let (first, last) = if range == "*" || range == "?" || (range.is_empty() && step.is_some())
        {
            (FIRST_YEAR, LAST_YEAR)
        } else if let Some((first, last)) = range.split_once('-') {
            (year(first)?, year(last)?)
        } else if step.is_some() {
            // Quartz: `2020/5` is 2020, 2025, ... to the end of the range.
            (year(range)?, LAST_YEAR)
        } else {
            let single = year(range)?;
            (single, single)
        };
        if first > last {
            return Err(fail(format!("range {first}-{last} runs backwards")));
        }
        for value in (first..=last).step_by(step.unwrap_or(1)) {
            years.insert(value);
        }
    }
    Ok(Some(years))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("test instant")
            .with_timezone(&Utc)
    }

    fn cron(expr: &str, tz: Option<&str>) -> CronSchedule {
        CronSchedule::parse(expr, tz).unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    /// The next `count` fire instants after `after`, as RFC 3339 strings.
    fn fires(expr: &str, tz: Option<&str>, after: &str, count: usize) -> Vec<String> {
        let schedule = cron(expr, tz);
        let mut at = t(after);
        let mut out = Vec::new();
        for _ in 0..count {
            match schedule.next_after(at) {
                Some(next) => {
                    assert!(next > at, "{expr}: {next} is not after {at}");
                    out.push(next.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
                    at = next;
                }
                None => break,
            }
        }
        out
    }

    fn reason(expr: &str) -> String {
        match CronSchedule::parse(expr, None) {
            Err(ScheduleError::Cron { expr: e, reason }) => {
                assert_eq!(e, expr);
                reason
            }
            other => panic!("{expr}: expected a cron error, got {other:?}"),
        }
    }

    // ---- field layouts ----------------------------------------------------------------

    #[test]
    fn five_fields_fire_at_second_zero() {
        assert_eq!(
            fires("*/15 * * * *", None, "2024-01-01T00:07:30Z", 3),
            [
                "2024-01-01T00:15:00Z",
                "2024-01-01T00:30:00Z",
                "2024-01-01T00:45:00Z"
            ]
        );
        assert_eq!(
            fires("30 9 * * *", None, "2024-01-01T09:30:00Z", 2),
            ["2024-01-02T09:30:00Z", "2024-01-03T09:30:00Z"]
        );
    }

    #[test]
    fn six_fields_start_with_seconds() {
        assert_eq!(
            fires("30 * * * * *", None, "2024-01-01T00:00:30Z", 2),
            ["2024-01-01T00:01:30Z", "2024-01-01T00:02:30Z"]
        );
        assert_eq!(
            fires("*/10 * * * * *", None, "2024-01-01T00:00:05.500Z", 2),
            ["2024-01-01T00:00:10Z", "2024-01-01T00:00:20Z"]
        );
        // Strictly after, also with a sub-second remainder.
        assert_eq!(
            fires("* * * * * *", None, "2024-01-01T00:00:00.500Z", 2),
            ["2024-01-01T00:00:01Z", "2024-01-01T00:00:02Z"]
        );
        // Quartz-style `a/n` steps.
        assert_eq!(
            fires("0 5/20 * * * ?", None, "2024-01-01T00:00:00Z", 4),
            [
                "2024-01-01T00:05:00Z",
                "2024-01-01T00:25:00Z",
                "2024-01-01T00:45:00Z",
                "2024-01-01T01:05:00Z"
            ]
        );
        // Rolling over the end of a year.
        assert_eq!(
            fires("59 59 23 31 12 *", None, "2024-06-01T00:00:00Z", 1),
            ["2024-12-31T23:59:59Z"]
        );
    }

    #[test]
    fn seven_fields_have_a_year() {
        assert_eq!(
            fires("0 0 12 1 1 ? 2030", None, "2024-06-01T00:00:00Z", 2),
            ["2030-01-01T12:00:00Z"]
        );
        assert_eq!(
            fires("0 0 0 1 1 * 2025-2035/5", None, "2020-01-01T00:00:00Z", 4),
            [
                "2025-01-01T00:00:00Z",
                "2030-01-01T00:00:00Z",
                "2035-01-01T00:00:00Z"
            ]
        );
        // `*/n` counts from 1970.
        assert_eq!(
            fires("0 0 0 1 1 * */20", None, "2000-06-01T00:00:00Z", 3),
            [
                "2010-01-01T00:00:00Z",
                "2030-01-01T00:00:00Z",
                "2050-01-01T00:00:00Z"
            ]
        );
        assert_eq!(
            fires("0 0 0 1 1 * 2031,2027", None, "2024-06-01T00:00:00Z", 3),
            ["2027-01-01T00:00:00Z", "2031-01-01T00:00:00Z"]
        );
        assert_eq!(
            fires("0 0 0 1 1 * 2090/5", None, "2024-06-01T00:00:00Z", 3),
            ["2090-01-01T00:00:00Z", "2095-01-01T00:00:00Z"]
        );
        // `*` and `?` mean every year, without the 2099 limit.
        assert_eq!(
            fires("0 0 0 1 1 * *", None, "2099-06-01T00:00:00Z", 1),
            ["2100-01-01T00:00:00Z"]
        );
        assert_eq!(
            fires("0 0 0 1 1 ? ?", None, "2150-06-01T00:00:00Z", 1),
            ["2151-01-01T00:00:00Z"]
        );
        // Years that are all past: valid, but no fire.
        assert_eq!(
            cron("0 0 0 1 1 * 2020", None).next_after(t("2024-01-01T00:00:00Z")),
            None
        );
    }

    #[test]
    fn nicknames() {
        assert_eq!(
            fires("@daily", None, "2024-01-01T10:00:00Z", 1),
            ["2024-01-02T00:00:00Z"]
        );
        assert_eq!(
            fires("@Weekly", None, "2024-01-01T10:00:00Z", 1),
            ["2024-01-07T00:00:00Z"]
        );
        assert!(reason("@fortnightly").contains("unknown nickname"));
    }

    // ---- names, weekday numbers and Quartz characters ------------------------------------

    #[test]
    fn month_and_weekday_names_are_case_insensitive() {
        // 2024-01-01 is a Monday.
        assert_eq!(
            fires("0 0 9 ? * MON", None, "2023-12-31T12:00:00Z", 2),
            ["2024-01-01T09:00:00Z", "2024-01-08T09:00:00Z"]
        );
        assert_eq!(
            fires("0 0 9 ? * sun", None, "2024-01-01T00:00:00Z", 1),
            ["2024-01-07T09:00:00Z"]
        );
        assert_eq!(
            fires("0 9 * jul Fri", None, "2024-01-01T00:00:00Z", 2),
            ["2024-07-05T09:00:00Z", "2024-07-12T09:00:00Z"]
        );
        assert_eq!(
            fires("0 0 1 Nov-dec *", None, "2024-02-01T00:00:00Z", 3),
            [
                "2024-11-01T00:00:00Z",
                "2024-12-01T00:00:00Z",
                "2025-11-01T00:00:00Z"
            ]
        );
        assert_eq!(
            fires("0 0 1 NOV,JAN *", None, "2024-02-01T00:00:00Z", 2),
            ["2024-11-01T00:00:00Z", "2025-01-01T00:00:00Z"]
        );
        // Weekday ranges with names, SUN at the end of a range is 7.
        assert_eq!(
            fires("0 12 * * sat-sun", None, "2024-01-01T00:00:00Z", 3),
            [
                "2024-01-06T12:00:00Z",
                "2024-01-07T12:00:00Z",
                "2024-01-13T12:00:00Z"
            ]
        );
        assert_eq!(
            fires("0 12 * * MON-FRI", None, "2024-01-05T13:00:00Z", 1),
            ["2024-01-08T12:00:00Z"]
        );
    }

    #[test]
    fn weekday_numbers_follow_unix() {
        // 2024-01-06 is a Saturday, 2024-01-07 a Sunday, 2024-01-08 a Monday.
        for sunday in ["0", "7"] {
            assert_eq!(
                fires(
                    &format!("0 0 0 ? * {sunday}"),
                    None,
                    "2024-01-01T00:00:00Z",
                    1
                ),
                ["2024-01-07T00:00:00Z"],
                "{sunday}"
            );
        }
        assert_eq!(
            fires("0 0 0 ? * 1", None, "2024-01-01T00:00:00Z", 1),
            ["2024-01-08T00:00:00Z"]
        );
        assert_eq!(
            fires("0 0 0 ? * 6", None, "2024-01-01T00:00:00Z", 1),
            ["2024-01-06T00:00:00Z"]
        );
        // The same in 5 and 7 fields.
        assert_eq!(
            fires("0 0 * * 1", None, "2024-01-01T00:00:00Z", 1),
            ["2024-01-08T00:00:00Z"]
        );
        assert_eq!(
            fires("0 0 0 ? * 1 2024", None, "2024-01-01T00:00:00Z", 1),
            ["2024-01-08T00:00:00Z"]
        );
        assert_eq!(
            fires("0 0 * * 1-5", None, "2024-01-05T12:00:00Z", 1),
            ["2024-01-08T00:00:00Z"]
        );
        assert!(reason("0 0 * * 8").contains("day-of-week"));
    }

    #[test]
    fn last_day_of_month() {
        assert_eq!(
            fires("0 0 0 L * ?", None, "2024-01-31T00:00:00Z", 3),
            [
                "2024-02-29T00:00:00Z",
                "2024-03-31T00:00:00Z",
                "2024-04-30T00:00:00Z"
            ]
        );
        assert_eq!(
            fires("0 0 L 2 *", None, "2023-01-01T00:00:00Z", 1),
            ["2023-02-28T00:00:00Z"]
        );
    }

    #[test]
    fn nearest_weekday() {
        // 2024-06-15 is a Saturday: the 14th; 2024-09-15 is a Sunday: the 16th;
        // 2024-06-01 is a Saturday and 1W does not leave June: Monday the 3rd.
        assert_eq!(
            fires("0 0 0 15W * ?", None, "2024-06-01T00:00:00Z", 1),
            ["2024-06-14T00:00:00Z"]
        );
        assert_eq!(
            fires("0 0 0 15W * ?", None, "2024-09-01T00:00:00Z", 1),
            ["2024-09-16T00:00:00Z"]
        );
        assert_eq!(
            fires("0 0 0 1W * ?", None, "2024-05-31T00:00:00Z", 1),
            ["2024-06-03T00:00:00Z"]
        );
        // LW: 2024-03-31 is a Sunday, so Friday the 29th.
        assert_eq!(
            fires("0 0 0 LW * ?", None, "2024-03-01T00:00:00Z", 2),
            ["2024-03-29T00:00:00Z", "2024-04-30T00:00:00Z"]
        );
    }

    #[test]
    fn nth_and_last_weekday() {
        assert_eq!(
            fires("0 0 0 ? * MON#2", None, "2024-01-01T00:00:00Z", 2),
            ["2024-01-08T00:00:00Z", "2024-02-12T00:00:00Z"]
        );
        assert_eq!(
            fires("0 0 0 ? * 5#3", None, "2024-01-01T00:00:00Z", 1),
            ["2024-01-19T00:00:00Z"]
        );
        // Last Friday: 5L, FRIL and 5#L.
        for expr in ["0 0 0 ? * 5L", "0 0 0 ? * FRIL", "0 0 0 ? * 5#L"] {
            assert_eq!(
                fires(expr, None, "2024-01-01T00:00:00Z", 2),
                ["2024-01-26T00:00:00Z", "2024-02-23T00:00:00Z"],
                "{expr}"
            );
        }
        // A lone L is Saturday, as in Quartz.
        assert_eq!(
            fires("0 0 0 ? * L", None, "2024-01-01T00:00:00Z", 1),
            ["2024-01-06T00:00:00Z"]
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_combine() {
        // Both restricted: either matches (Vixie). 2024-01-01 is a Monday.
        assert_eq!(
            fires("0 0 13 * FRI", None, "2024-01-01T00:00:00Z", 3),
            [
                "2024-01-05T00:00:00Z",
                "2024-01-12T00:00:00Z",
                "2024-01-13T00:00:00Z"
            ]
        );
        // `+` requires both: Friday the 13th.
        assert_eq!(
            fires("0 0 13 * +FRI", None, "2024-01-01T00:00:00Z", 2),
            ["2024-09-13T00:00:00Z", "2024-12-13T00:00:00Z"]
        );
        // `?` is `*`.
        assert_eq!(
            fires("0 0 0 ? * ?", None, "2024-01-01T12:00:00Z", 1),
            ["2024-01-02T00:00:00Z"]
        );
    }

    #[test]
    fn rare_dates() {
        assert_eq!(
            fires("0 0 0 29 2 *", None, "2024-03-01T00:00:00Z", 2),
            ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
        );
        // 29 February on a Monday.
        assert_eq!(
            fires("0 0 29 2 +MON", None, "2024-03-01T00:00:00Z", 1),
            ["2044-02-29T00:00:00Z"]
        );
        // 2100 is not a leap year.
        assert_eq!(
            fires("0 0 0 29 2 *", None, "2096-03-01T00:00:00Z", 1),
            ["2104-02-29T00:00:00Z"]
        );
    }

    // ---- never firing -------------------------------------------------------------------

    #[test]
    fn expressions_that_never_fire_are_refused() {
        for expr in [
            "0 0 0 30 FEB *",
            "0 0 31 4 *",
            "0 0 0 29 2 * 2025",
            "0 0 0 31 2,4,6,9,11 ?",
        ] {
            let why = reason(expr);
            assert!(why.contains("never fires"), "{expr}: {why}");
        }
        // Possible, though rare.
        assert!(CronSchedule::parse("0 0 0 29 2 * 2028", None).is_ok());
        assert!(CronSchedule::parse("0 0 0 31 2,3 *", None).is_ok());
    }

    #[test]
    fn extreme_instants_return_none() {
        let schedule = cron("* * * * * *", Some("Pacific/Kiritimati"));
        assert_eq!(schedule.next_after(DateTime::<Utc>::MAX_UTC), None);
        assert_eq!(
            cron("0 0 0 1 1 *", Some("America/New_York")).next_after(t("2262-01-01T00:00:00Z")),
            Some(t("2262-01-01T05:00:00Z"))
        );
        assert!(
            cron("* * * * * *", None)
                .next_after(DateTime::<Utc>::MIN_UTC)
                .is_some()
        );
    }

    // ---- time zones and DST ---------------------------------------------------------------

    #[test]
    fn time_zones() {
        assert_eq!(
            fires(
                "0 0 9 * * *",
                Some("Europe/Berlin"),
                "2024-01-15T00:00:00Z",
                1
            ),
            ["2024-01-15T08:00:00Z"]
        );
        assert_eq!(
            fires(
                "0 0 9 * * *",
                Some("Europe/Berlin"),
                "2024-07-15T00:00:00Z",
                1
            ),
            ["2024-07-15T07:00:00Z"]
        );
        assert_eq!(
            fires(
                "0 0 9 * * *",
                Some("America/New_York"),
                "2024-01-15T00:00:00Z",
                1
            ),
            ["2024-01-15T14:00:00Z"]
        );
        assert_eq!(
            fires(
                "0 0 0 1 * *",
                Some("Asia/Kolkata"),
                "2024-01-15T00:00:00Z",
                1
            ),
            ["2024-01-31T18:30:00Z"]
        );
        assert_eq!(cron("* * * * *", None).tz(), Tz::UTC);
        assert_eq!(
            cron("* * * * *", Some("Europe/Berlin")).tz(),
            Tz::Europe__Berlin
        );
        assert_eq!(cron(" * * * * * ", None).expr(), " * * * * * ");
    }

    #[test]
    fn spring_forward_gap_fires_after_the_gap() {
        // Berlin: 2024-03-31 02:00 CET -> 03:00 CEST (01:00Z).
        assert_eq!(
            fires(
                "0 30 2 * * *",
                Some("Europe/Berlin"),
                "2024-03-30T12:00:00Z",
                3
            ),
            [
                "2024-03-31T01:00:00Z",
                "2024-04-01T00:30:00Z",
                "2024-04-02T00:30:00Z"
            ]
        );
        // New York: 2024-03-10 02:00 EST -> 03:00 EDT (07:00Z).
        assert_eq!(
            fires(
                "0 30 2 * * *",
                Some("America/New_York"),
                "2024-03-09T00:00:00Z",
                3
            ),
            [
                "2024-03-09T07:30:00Z",
                "2024-03-10T07:00:00Z",
                "2024-03-11T06:30:00Z"
            ]
        );
        // Several times in one gap make one fire; 03:00 itself is the same instant.
        assert_eq!(
            fires(
                "0 0,30 2,3 * * *",
                Some("Europe/Berlin"),
                "2024-03-30T23:00:00Z",
                3
            ),
            [
                "2024-03-31T01:00:00Z",
                "2024-03-31T01:30:00Z",
                "2024-04-01T00:00:00Z"
            ]
        );
        assert_eq!(
            fires(
                "0 * 2 * * *",
                Some("Europe/Berlin"),
                "2024-03-30T23:00:00Z",
                2
            ),
            ["2024-03-31T01:00:00Z", "2024-04-01T00:00:00Z"]
        );
        // From inside the previous hour, and exactly at the change.
        assert_eq!(
            fires(
                "0 30 2 * * *",
                Some("Europe/Berlin"),
                "2024-03-31T00:59:59.500Z",
                1
            ),
            ["2024-03-31T01:00:00Z"]
        );
        assert_eq!(
            fires(
                "0 30 2 * * *",
                Some("Europe/Berlin"),
                "2024-03-31T01:00:00Z",
                1
            ),
            ["2024-04-01T00:30:00Z"]
        );
    }

    #[test]
    fn spring_forward_gap_is_skipped_by_every_hour_schedules() {
        assert_eq!(
            fires(
                "0 30 * * * *",
                Some("Europe/Berlin"),
                "2024-03-30T23:45:00Z",
                3
            ),
            [
                "2024-03-31T00:30:00Z",
                "2024-03-31T01:30:00Z",
                "2024-03-31T02:30:00Z"
            ]
        );
        assert_eq!(
            fires(
                "0 */15 * * * *",
                Some("Europe/Berlin"),
                "2024-03-31T00:30:00Z",
                3
            ),
            [
                "2024-03-31T00:45:00Z",
                "2024-03-31T01:00:00Z",
                "2024-03-31T01:15:00Z"
            ]
        );
        assert_eq!(
            fires(
                "0 */30 * * * *",
                Some("America/New_York"),
                "2024-03-10T06:00:00Z",
                3
            ),
            [
                "2024-03-10T06:30:00Z",
                "2024-03-10T07:00:00Z",
                "2024-03-10T07:30:00Z"
            ]
        );
        // Every second across the gap.
        assert_eq!(
            fires(
                "* * * * * *",
                Some("Europe/Berlin"),
                "2024-03-31T00:59:59Z",
                2
            ),
            ["2024-03-31T01:00:00Z", "2024-03-31T01:00:01Z"]
        );
    }

    #[test]
    fn fall_back_overlap_fires_once_for_restricted_hours() {
        // Berlin: 2024-10-27 03:00 CEST -> 02:00 CET (01:00Z).
        assert_eq!(
            fires(
                "0 30 2 * * *",
                Some("Europe/Berlin"),
                "2024-10-26T12:00:00Z",
                2
            ),
            ["2024-10-27T00:30:00Z", "2024-10-28T01:30:00Z"]
        );
        // From the second pass of the repeated hour.
        assert_eq!(
            fires(
                "0 30 2 * * *",
                Some("Europe/Berlin"),
                "2024-10-27T01:10:00Z",
                1
            ),
            ["2024-10-28T01:30:00Z"]
        );
        // New York: 2024-11-03 02:00 EDT -> 01:00 EST (06:00Z).
        assert_eq!(
            fires(
                "0 30 1 * * *",
                Some("America/New_York"),
                "2024-11-02T12:00:00Z",
                2
            ),
            ["2024-11-03T05:30:00Z", "2024-11-04T06:30:00Z"]
        );
        // Every minute of hour 2: the first pass only.
        let minutes = fires(
            "0 * 2 * * *",
            Some("Europe/Berlin"),
            "2024-10-26T23:00:00Z",
            61,
        );
        assert_eq!(minutes.len(), 61);
        assert_eq!(minutes[0], "2024-10-27T00:00:00Z");
        assert_eq!(minutes[59], "2024-10-27T00:59:00Z");
        assert_eq!(minutes[60], "2024-10-28T01:00:00Z");
        assert_eq!(
            fires(
                "0 0 */2 * * *",
                Some("Europe/Berlin"),
                "2024-10-26T23:30:00Z",
                3
            ),
            [
                "2024-10-27T00:00:00Z",
                "2024-10-27T03:00:00Z",
                "2024-10-27T05:00:00Z"
            ]
        );
    }

    #[test]
    fn fall_back_overlap_fires_twice_for_every_hour_schedules() {
        // Every 15 minutes of elapsed time, through both passes of 02:00-03:00.
        let expected: Vec<String> = (0..10)
            .map(|i| {
                let at = t("2024-10-26T23:45:00Z") + TimeDelta::minutes(15 * i);
                at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            })
            .collect();
        assert_eq!(
            fires(
                "0 */15 * * * *",
                Some("Europe/Berlin"),
                "2024-10-26T23:30:00Z",
                10
            ),
            expected
        );
        // Starting inside the first pass, after its last match: the second pass follows.
        assert_eq!(
            fires(
                "0 */15 * * * *",
                Some("Europe/Berlin"),
                "2024-10-27T00:50:00Z",
                2
            ),
            ["2024-10-27T01:00:00Z", "2024-10-27T01:15:00Z"]
        );
        assert_eq!(
            fires(
                "0 5 * * * *",
                Some("Europe/Berlin"),
                "2024-10-27T00:20:00Z",
                3
            ),
            [
                "2024-10-27T01:05:00Z",
                "2024-10-27T02:05:00Z",
                "2024-10-27T03:05:00Z"
            ]
        );
        // Starting inside the second pass.
        assert_eq!(
            fires(
                "0 */15 * * * *",
                Some("Europe/Berlin"),
                "2024-10-27T01:10:00Z",
                1
            ),
            ["2024-10-27T01:15:00Z"]
        );
        // New York, hourly at :30: 01:30 EDT, 01:30 EST, 02:30 EST.
        assert_eq!(
            fires(
                "0 30 * * * *",
                Some("America/New_York"),
                "2024-11-03T05:00:00Z",
                3
            ),
            [
                "2024-11-03T05:30:00Z",
                "2024-11-03T06:30:00Z",
                "2024-11-03T07:30:00Z"
            ]
        );
        // A day of every-hour fires has 25 hours.
        let hourly = fires(
            "0 0 * * * *",
            Some("America/New_York"),
            "2024-11-03T03:59:59Z",
            26,
        );
        assert_eq!(hourly[0], "2024-11-03T04:00:00Z");
        assert_eq!(hourly[24], "2024-11-04T04:00:00Z");
        assert_eq!(hourly[25], "2024-11-04T05:00:00Z");
    }

    #[test]
    fn gap_at_midnight() {
        // America/Havana skips 00:00-01:00 on 2024-03-10 (CST -> CDT at 05:00Z).
        assert_eq!(
            fires(
                "0 0 0 * * *",
                Some("America/Havana"),
                "2024-03-09T12:00:00Z",
                2
            ),
            ["2024-03-10T05:00:00Z", "2024-03-11T04:00:00Z"]
        );
    }

    // ---- errors -------------------------------------------------------------------------

    #[test]
    fn cron_errors_say_what_is_wrong() {
        assert_eq!(reason("* * * *"), "expected 5, 6 or 7 fields, got 4");
        assert_eq!(
            reason("0 0 0 * * * * *"),
            "expected 5, 6 or 7 fields, got 8"
        );
        assert_eq!(reason("   "), "the expression is empty");
        let why = reason("61 * * * * *");
        assert!(why.starts_with("second field \"61\""), "{why}");
        let why = reason("* 24 * * *");
        assert!(why.starts_with("hour field \"24\""), "{why}");
        let why = reason("* * 32 * *");
        assert!(why.starts_with("day-of-month field \"32\""), "{why}");
        let why = reason("* * * 13 *");
        assert!(why.starts_with("month field \"13\""), "{why}");
        let why = reason("* * * MON *");
        assert!(why.contains("month names are JAN-DEC"), "{why}");
        let why = reason("* * * * MON-XYZ");
        assert!(
            why.starts_with("day-of-week field \"MON-XYZ\": unexpected \"XYZ\""),
            "{why}"
        );
        let why = reason("*/0 * * * *");
        assert!(why.contains("step cannot be zero"), "{why}");
        let why = reason("* * L-3 * ?");
        assert!(why.contains("L-n"), "{why}");
        let why = reason("* * * * * %");
        assert!(why.contains("unexpected character '%'"), "{why}");
        let why = reason("0 0 0 1 1 ? 1969");
        assert!(why.contains("year 1969 is outside 1970-2099"), "{why}");
        let why = reason("0 0 0 1 1 ? 2100");
        assert!(why.contains("outside 1970-2099"), "{why}");
        let why = reason("0 0 0 1 1 ? 2030-2025");
        assert!(why.contains("backwards"), "{why}");
        let why = reason("0 0 0 1 1 ? */0");
        assert!(why.contains("not a positive number"), "{why}");
        let why = reason("0 0 0 1 1 ? 20x0");
        assert!(why.starts_with("year field"), "{why}");
        let error = CronSchedule::parse("* * * *", None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid cron expression \"* * * *\": expected 5, 6 or 7 fields, got 4"
        );
    }

    #[test]
    fn time_zone_errors() {
        assert_eq!(parse_tz("Europe/Berlin"), Ok(Tz::Europe__Berlin));
        assert_eq!(parse_tz("UTC"), Ok(Tz::UTC));
        assert_eq!(
            parse_tz("Mars/Olympus_Mons"),
            Err(ScheduleError::TimeZone("Mars/Olympus_Mons".to_owned()))
        );
        assert!(matches!(
            CronSchedule::parse("* * * * *", Some("CEST+2")),
            Err(ScheduleError::TimeZone(name)) if name == "CEST+2"
        ));
        assert!(matches!(parse_tz(""), Err(ScheduleError::TimeZone(_))));
    }

    // ---- fixed rate, one-off, delay, manual ---------------------------------------------------

    #[test]
    fn every_counts_from_the_anchor() {
        let anchor = t("2024-01-01T00:00:00Z");
        let every = Schedule::Every(Duration::from_secs(10));
        // Before the anchor: the anchor itself.
        assert_eq!(
            every.next_after(t("2023-12-31T00:00:00Z"), anchor),
            Some(anchor)
        );
        assert_eq!(
            every.next_after(t("2023-12-31T23:59:59.999Z"), anchor),
            Some(anchor)
        );
        // At the anchor and at exact multiples: the next one.
        assert_eq!(
            every.next_after(anchor, anchor),
            Some(t("2024-01-01T00:00:10Z"))
        );
        assert_eq!(
            every.next_after(t("2024-01-01T00:00:20Z"), anchor),
            Some(t("2024-01-01T00:00:30Z"))
        );
        assert_eq!(
            every.next_after(t("2024-01-01T00:00:25Z"), anchor),
            Some(t("2024-01-01T00:00:30Z"))
        );
        assert_eq!(
            every.next_after(t("2024-01-01T00:00:29.999999999Z"), anchor),
            Some(t("2024-01-01T00:00:30Z"))
        );
        // Far away from the anchor.
        assert_eq!(
            every.next_after(t("2054-07-01T12:34:56.5Z"), anchor),
            Some(t("2054-07-01T12:35:00Z"))
        );
    }

    #[test]
    fn every_sub_second_and_overflow() {
        let anchor = t("2024-01-01T00:00:00.100Z");
        let every = Schedule::Every(Duration::from_millis(250));
        assert_eq!(
            every.next_after(t("2024-01-01T00:00:01.100Z"), anchor),
            Some(t("2024-01-01T00:00:01.350Z"))
        );
        assert_eq!(
            every.next_after(t("2024-01-01T00:00:01.200Z"), anchor),
            Some(t("2024-01-01T00:00:01.350Z"))
        );
        assert_eq!(
            every.next_after(t("2024-01-01T00:00:01.350Z"), anchor),
            Some(t("2024-01-01T00:00:01.600Z"))
        );
        let huge = Schedule::Every(Duration::MAX);
        assert_eq!(huge.next_after(anchor, anchor), None);
        assert_eq!(
            Schedule::Every(Duration::from_secs(1)).next_after(DateTime::<Utc>::MAX_UTC, anchor),
            None
        );
        // A zero interval (refused by validation) fires at the anchor only.
        let zero = Schedule::Every(Duration::ZERO);
        assert_eq!(
            zero.next_after(t("2023-01-01T00:00:00Z"), anchor),
            Some(anchor)
        );
        assert_eq!(zero.next_after(anchor, anchor), None);
    }

    #[test]
    fn at_fires_once() {
        let at = t("2024-05-01T12:00:00Z");
        let anchor = t("2024-01-01T00:00:00Z");
        let schedule = Schedule::At(at);
        assert_eq!(
            schedule.next_after(t("2024-05-01T11:59:59.999Z"), anchor),
            Some(at)
        );
        assert_eq!(schedule.next_after(at, anchor), None);
        assert_eq!(schedule.next_after(t("2024-06-01T00:00:00Z"), anchor), None);
        assert_eq!(schedule.next_delay_fire(anchor), None);
    }

    #[test]
    fn delay_and_manual() {
        let now = t("2024-05-01T12:00:00Z");
        let delay = Schedule::Delay(Duration::from_millis(1500));
        assert_eq!(delay.next_after(now, now), None);
        assert_eq!(
            delay.next_delay_fire(now),
            Some(t("2024-05-01T12:00:01.500Z"))
        );
        assert_eq!(Schedule::Delay(Duration::MAX).next_delay_fire(now), None);
        assert_eq!(Schedule::Manual.next_after(now, now), None);
        assert_eq!(Schedule::Manual.next_delay_fire(now), None);
        assert_eq!(
            Schedule::Every(Duration::from_secs(1)).next_delay_fire(now),
            None
        );
        let cron = Schedule::Cron(cron("0 0 * * *", None));
        assert_eq!(cron.next_delay_fire(now), None);
        assert_eq!(cron.next_after(now, now), Some(t("2024-05-02T00:00:00Z")));
    }

    // ---- cross-checks -------------------------------------------------------------------

    /// A small deterministic generator for test instants.
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *state >> 33
    }

    #[test]
    fn matches_croner_in_utc() {
        // Without DST, croner's own search is an independent oracle.
        let expressions = [
            "* * * * * *",
            "*/7 */11 * * * *",
            "0 0 0 * * *",
            "30 15 10 * * MON-FRI",
            "0 0 12 L * ?",
            "0 0 12 LW * ?",
            "0 0 12 15W * ?",
            "0 0 12 1W,L * ?",
            "0 0 9 ? * MON#2",
            "0 0 9 ? * 5L",
            "0 0 9 ? * SUN#5",
            "0 0 9 13 * FRI",
            "0 0 9 13 * +FRI",
            "0 0 0 29 2 *",
            "0 0 0 31 * *",
            "0 5-10/2 3,7,22 */3 JAN-MAR,NOV *",
            "0 0 0 1 1 *",
            "59 59 23 31 12 *",
            "0 0 0 ? FEB SAT#4",
            "0 0/25 1/5 * * ?",
        ];
        let parser = CronParser::builder()
            .seconds(Seconds::Required)
            .sloppy_ranges(true)
            .build();
        let mut state = 42;
        for expr in expressions {
            let ours = cron(expr, None);
            let oracle = parser.parse(expr).expect("croner parses");
            for _ in 0..200 {
                // Instants from 1970 to about 2106, some with a fraction of a second.
                let secs = i64::try_from(lcg(&mut state) % 4_300_000_000).expect("fits");
                let nanos = if lcg(&mut state) & 1 == 0 {
                    0
                } else {
                    500_000_000
                };
                let after = DateTime::from_timestamp(secs, nanos).expect("in range");
                let expected = oracle.find_next_occurrence(&after, false).ok();
                assert_eq!(ours.next_after(after), expected, "{expr} after {after}");
            }
        }
    }

    /// The DST rules of the module documentation, by brute force over wall-clock minutes:
    /// every fire instant of `expr` (seconds field 0) whose wall-clock time lies in
    /// `[from, to)`.
    fn reference_fires(
        expr: &str,
        tz: Tz,
        from: NaiveDateTime,
        to: NaiveDateTime,
    ) -> Vec<DateTime<Utc>> {
        let parser = CronParser::builder().seconds(Seconds::Required).build();
        let pattern = parser.parse(expr).expect("croner parses");
        let all_hours = pattern.pattern.hours.values().len() == 24;
        let mut fires = Vec::new();
        let mut wall = from;
        while wall < to {
            if pattern.is_time_matching(&wall).expect("matching") {
                match tz.from_local_datetime(&wall) {
                    LocalResult::Single(at) => fires.push(at.with_timezone(&Utc)),
                    LocalResult::Ambiguous(earlier, later) => {
                        fires.push(earlier.with_timezone(&Utc));
                        if all_hours {
                            fires.push(later.with_timezone(&Utc));
                        }
                    }
                    LocalResult::None if !all_hours => {
                        // The first instant whose wall-clock time is after `wall`.
                        let mut at = wall.and_utc() - TimeDelta::hours(16);
                        while at.with_timezone(&tz).naive_local() <= wall {
                            at += TimeDelta::minutes(1);
                        }
                        fires.push(at);
                    }
                    LocalResult::None => {}
                }
            }
            wall += TimeDelta::minutes(1);
        }
        fires.sort();
        fires.dedup();
        fires
    }

    #[test]
    fn dst_rules_match_brute_force() {
        let expressions = [
            "0 30 2 * * *",
            "0 0 2 * * *",
            "0 */15 * * * *",
            "0 0 * * * *",
            "0 30 * * * *",
            "0 * 2 * * *",
            "0 0,30 1-3 * * *",
            "0 45 23 * * *",
            "0 0 0 * * *",
            "0 15 */2 * * *",
            "0 0 12 * * *",
            "0 10 0-1 * * *",
        ];
        // Zones and days with a clock change, including a 30-minute change, changes at
        // midnight, an overlap that crosses midnight and a skipped day.
        let changes = [
            ("Europe/Berlin", "2024-03-31"),
            ("Europe/Berlin", "2024-10-27"),
            ("America/New_York", "2024-03-10"),
            ("America/New_York", "2024-11-03"),
            ("Australia/Lord_Howe", "2024-04-07"),
            ("Australia/Lord_Howe", "2024-10-06"),
            ("America/Havana", "2024-03-10"),
            ("America/Havana", "2024-11-03"),
            ("America/Sao_Paulo", "2018-11-04"),
            ("America/Sao_Paulo", "2019-02-17"),
            ("Pacific/Apia", "2011-12-30"),
        ];
        for (zone, day) in changes {
            let tz = parse_tz(zone).expect("zone");
            let day = NaiveDate::parse_from_str(day, "%Y-%m-%d").expect("day");
            let walls_from = (day - TimeDelta::days(2))
                .and_hms_opt(0, 0, 0)
                .expect("wall");
            let walls_to = (day + TimeDelta::days(3))
                .and_hms_opt(0, 0, 0)
                .expect("wall");
            // Query instants well inside the wall-clock window.
            let start = walls_from.and_utc() + TimeDelta::days(1);
            let end = walls_to.and_utc() - TimeDelta::days(1);
            for expr in expressions {
                let reference = reference_fires(expr, tz, walls_from, walls_to);
                let ours = cron(expr, Some(zone));
                let mut after = start;
                while after < end {
                    // The reference is complete up to `end`.
                    let expected = reference
                        .iter()
                        .find(|&&at| at > after)
                        .copied()
                        .filter(|&at| at <= end);
                    assert_eq!(
                        ours.next_after(after).filter(|&at| at <= end),
                        expected,
                        "{expr} in {zone} after {after}"
                    );
                    after += TimeDelta::seconds(7 * 60 + 30);
                }
                // Iterating from fire to fire yields exactly the reference instants.
                let mut at = start;
                let mut chained = Vec::new();
                while let Some(next) = ours.next_after(at).filter(|&next| next <= end) {
                    chained.push(next);
                    at = next;
                }
                let expected: Vec<_> = reference
                    .iter()
                    .filter(|&&at| at > start && at <= end)
                    .copied()
                    .collect();
                assert_eq!(chained, expected, "{expr} in {zone}");
            }
        }
    }
}
