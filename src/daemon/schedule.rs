//! When the daemon checks: cron expressions (6 fields with seconds, or ordinary 5-field cron with
//! seconds = 0), read in one IANA time zone (UTC by default), global and per case.
//!
//! Times are computed with croner in the real zone, so daylight-saving changes follow the usual
//! cron rules: a fixed time that falls into the spring-forward gap (02:30 in Europe/Berlin on the
//! last Sunday of March) runs once at the first valid time after the gap (03:00); a fixed time in
//! the autumn overlap (02:30 happens twice) runs once, at the first; interval schedules (`*/15`)
//! keep their rhythm in real time through both. tokio-cron-scheduler 0.15 was not used for this:
//! it computes every tick with the zone's UTC offset captured when the job was created
//! (`scheduler.rs`, `FixedOffset::east_opt(job.time_offset_seconds)`), so after a DST change a
//! 03:00 job would run at 02:00 or 04:00 local time until the daemon restarted.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

use crate::config::Config;

/// A cron expression with 5 fields gets seconds = 0; 6 fields are used as written.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let fields = expr.split_whitespace().count();
    let six = match fields {
        5 => format!("0 {}", expr.trim()),
        6 => expr.trim().to_string(),
        n => {
            return Err(format!(
                "schedule {expr:?} has {n} fields; write 6 (sec min hour day month weekday, e.g. \"0 */30 * * * *\") or 5 (min hour day month weekday, e.g. \"*/30 * * * *\")"
            ))
        }
    };
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(&six)
        .map_err(|e| format!("schedule {expr:?} is not a valid cron expression: {e}"))
}

/// An IANA zone name (`Europe/Berlin`); absent means UTC.
pub fn parse_timezone(name: Option<&str>) -> Result<Tz, String> {
    match name {
        None => Ok(Tz::UTC),
        Some(n) => n.parse::<Tz>().map_err(|_| {
            format!("timezone {n:?} is not an IANA time zone name (e.g. UTC, Europe/Berlin, America/New_York)")
        }),
    }
}

/// One schedule and the cases it runs.
#[derive(Debug, Clone)]
struct Entry {
    expr: String,
    cron: Cron,
    cases: Vec<String>,
}

/// What a tick runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickKind {
    /// A full check of the due cases.
    Check,
    /// A quick check of every case (`quick_schedule`); the cases it cannot clear get a full one.
    Quick,
}

/// Every schedule of a config.
#[derive(Debug, Clone)]
pub struct Plan {
    tz: Tz,
    entries: Vec<Entry>,
    quick: Option<Cron>,
    /// Cases with neither their own nor a global schedule (never run by the daemon).
    pub unscheduled: Vec<String>,
}

impl Plan {
    /// The plan of `config`; an error names the key (`schedule`, `cases[2].schedule`, `timezone`).
    pub fn from_config(config: &Config) -> Result<Plan, String> {
        let tz =
            parse_timezone(config.timezone.as_deref()).map_err(|e| format!("timezone: {e}"))?;
        let global = match &config.schedule {
            Some(s) => Some((
                s.clone(),
                parse_cron(s).map_err(|e| format!("schedule: {e}"))?,
            )),
            None => None,
        };
        let mut entries: Vec<Entry> = Vec::new();
        let mut unscheduled = Vec::new();
        for (i, case) in config.cases.iter().enumerate() {
            let (expr, cron) = match (&case.schedule, &global) {
                (Some(s), _) => (
                    s.clone(),
                    parse_cron(s).map_err(|e| format!("cases[{i}].schedule: {e}"))?,
                ),
                (None, Some((s, c))) => (s.clone(), c.clone()),
                (None, None) => {
                    unscheduled.push(case.name.clone());
                    continue;
                }
            };
            match entries
                .iter_mut()
                .find(|e| e.expr.split_whitespace().eq(expr.split_whitespace()))
            {
                Some(e) => e.cases.push(case.name.clone()),
                None => entries.push(Entry {
                    expr,
                    cron,
                    cases: vec![case.name.clone()],
                }),
            }
        }
        let quick = match &config.quick_schedule {
            Some(q) => Some(parse_cron(q).map_err(|e| format!("quick_schedule: {e}"))?),
            None => None,
        };
        let any_pipeline = config
            .cases
            .iter()
            .any(|c| c.target == crate::config::Target::Pipeline);
        if quick.is_some() && !any_pipeline {
            return Err("quick_schedule: every case targets the generation service, and a quick check replays the monitor's own pipeline only; remove quick_schedule".into());
        }
        if entries.is_empty() && quick.is_none() {
            return Err("schedule: no schedule is set; `monitor run` needs `schedule:` (or a `schedule` on a case, or `quick_schedule:`), e.g. schedule: \"0 */30 * * * *\"".into());
        }
        Ok(Plan {
            tz,
            entries,
            quick,
            unscheduled,
        })
    }

    /// The next tick strictly after `after` of either kind. A full check and a quick check due
    /// at the same second are the full check alone: it sees everything the quick one would.
    pub fn next_tick_after(
        &self,
        after: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, TickKind, Vec<String>)> {
        let full = self.next_after(after);
        let quick = self.quick.as_ref().and_then(|c| {
            let local = after.with_timezone(&self.tz);
            c.find_next_occurrence(&local, false)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        });
        match (full, quick) {
            (Some((t, cases)), Some(q)) if t <= q => Some((t, TickKind::Check, cases)),
            (_, Some(q)) => Some((q, TickKind::Quick, Vec::new())),
            (Some((t, cases)), None) => Some((t, TickKind::Check, cases)),
            (None, None) => None,
        }
    }

    /// Whether a `quick_schedule` is set.
    pub fn has_quick(&self) -> bool {
        self.quick.is_some()
    }

    /// The zone schedules are read in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The next tick strictly after `after`, with every case due at that second (cases of
    /// different schedules that fall on the same second run together, in one worker). The cases
    /// are in config order of their schedules.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<(DateTime<Utc>, Vec<String>)> {
        let local = after.with_timezone(&self.tz);
        let times: Vec<(DateTime<Utc>, &Entry)> = self
            .entries
            .iter()
            .filter_map(|e| {
                let t = e.cron.find_next_occurrence(&local, false).ok()?;
                Some((t.with_timezone(&Utc), e))
            })
            .collect();
        let first = times.iter().map(|(t, _)| *t).min()?;
        let cases = times
            .iter()
            .filter(|(t, _)| *t == first)
            .flat_map(|(_, e)| e.cases.iter().cloned())
            .collect();
        Some((first, cases))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Cases a and c use the global schedule (if any); b has its own when `b_own` is set.
    fn config_with(yaml_extra: &str, b_own: bool) -> Config {
        let b = if b_own {
            ", schedule: \"*/20 * * * * *\""
        } else {
            ""
        };
        let text = format!(
            "model: {{path: m}}\n{yaml_extra}\ncases:\n  - {{name: a, prompt: p, seed: 1}}\n  - {{name: b, prompt: p, seed: 2{b}}}\n  - {{name: c, prompt: p, seed: 3}}\n"
        );
        Config::parse(&text, std::path::Path::new("/tmp/x.yaml")).unwrap()
    }

    fn config(yaml_extra: &str) -> Config {
        config_with(yaml_extra, true)
    }

    #[test]
    fn five_fields_mean_seconds_zero_and_other_counts_are_refused() {
        let five = parse_cron("*/30 * * * *").unwrap();
        let t = five
            .find_next_occurrence(&utc("2026-12-04T10:00:01Z"), false)
            .unwrap();
        assert_eq!(t, utc("2026-12-04T10:30:00Z"));
        let six = parse_cron("15 */30 * * * *").unwrap();
        let t = six
            .find_next_occurrence(&utc("2026-12-04T10:00:01Z"), false)
            .unwrap();
        assert_eq!(t, utc("2026-12-04T10:00:15Z"));
        for bad in [
            "* * * *",
            "1 2 3 4 5 6 7 8",
            "61 * * * * *",
            "nonsense here x y z",
        ] {
            assert!(parse_cron(bad).is_err(), "{bad}");
        }
        assert!(parse_cron("* * *").unwrap_err().contains("has 3 fields"));
    }

    #[test]
    fn cases_due_at_the_same_second_run_together() {
        let plan = Plan::from_config(&config("schedule: \"*/30 * * * * *\"")).unwrap();
        // At :20 only b (own schedule) is due; at :40 b again; at :00 all three.
        let (t, cases) = plan.next_after(utc("2026-12-04T10:00:10Z")).unwrap();
        assert_eq!(
            (t, cases),
            (utc("2026-12-04T10:00:20Z"), vec!["b".to_string()])
        );
        let (t, cases) = plan.next_after(utc("2026-12-04T10:00:50Z")).unwrap();
        assert_eq!(t, utc("2026-12-04T10:01:00Z"));
        assert_eq!(cases, ["a", "c", "b"]);
    }

    #[test]
    fn a_quick_schedule_needs_a_pipeline_case() {
        let text = "model: {path: m}\nquick_schedule: \"*/10 * * * * *\"\ncases:\n  - {name: a, prompt: p, seed: 1, target: service}\n";
        let config = Config::parse(text, std::path::Path::new("/tmp/x.yaml")).unwrap();
        let Err(e) = Plan::from_config(&config) else {
            panic!("quick checks of service cases only were accepted")
        };
        assert!(
            e.starts_with("quick_schedule: every case targets the generation service"),
            "{e}"
        );
        // One pipeline case beside it is enough.
        let text = text.replace(
            "target: service}",
            "target: service}\n  - {name: b, prompt: p, seed: 2}",
        );
        let config = Config::parse(&text, std::path::Path::new("/tmp/x.yaml")).unwrap();
        assert!(Plan::from_config(&config).is_ok());
    }

    #[test]
    fn no_schedule_is_an_error_and_a_bad_zone_names_the_key() {
        let Err(e) = Plan::from_config(&config_with("", false)) else {
            panic!("a config without any schedule was accepted")
        };
        assert!(e.starts_with("schedule: no schedule is set"), "{e}");
        // b has its own schedule, so the plan exists; a and c are unscheduled.
        let Ok(p) = Plan::from_config(&config("timezone: Europe/Berlin")) else {
            panic!("plan refused")
        };
        assert_eq!(p.unscheduled, ["a", "c"]);
        let Err(e) =
            Plan::from_config(&config("schedule: \"0 0 3 * * *\"\ntimezone: Mars/Olympus"))
        else {
            panic!("unknown zone accepted")
        };
        assert!(e.starts_with("timezone: "), "{e}");
    }

    #[test]
    fn local_times_follow_daylight_saving_changes() {
        let plan = Plan::from_config(&config_with(
            "schedule: \"0 0 3 * * *\"\ntimezone: Europe/Berlin",
            false,
        ))
        .unwrap();
        // 03:00 in Berlin is 02:00Z in winter (CET) and 01:00Z in summer (CEST); DST began on
        // 2026-03-29. A fixed offset captured in winter would give 02:00Z after the change.
        let (t, _) = plan.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(t, utc("2026-03-29T01:00:00Z"));
        let (t, _) = plan.next_after(utc("2026-03-27T12:00:00Z")).unwrap();
        assert_eq!(t, utc("2026-03-28T02:00:00Z"));
        // 02:30 does not exist on 2026-03-29 in Berlin: it runs once, at 03:00 local (01:00Z).
        let plan = Plan::from_config(&config_with(
            "schedule: \"0 30 2 * * *\"\ntimezone: Europe/Berlin",
            false,
        ))
        .unwrap();
        let (t, _) = plan.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(
            t,
            chrono_tz::Europe::Berlin
                .with_ymd_and_hms(2026, 3, 29, 3, 0, 0)
                .unwrap()
                .with_timezone(&Utc)
        );
        // 02:30 happens twice on 2026-10-25: it runs once, at the first (00:30Z, still CEST).
        let (t, _) = plan.next_after(utc("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(t, utc("2026-10-25T00:30:00Z"));
        let (t, _) = plan.next_after(t).unwrap();
        assert_eq!(t, utc("2026-10-26T01:30:00Z"));
    }
}
