//! Slurm's time formats.

use std::time::Duration;

/// Parses a Slurm duration: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`,
/// `D-HH:MM:SS` (the forms `--time` takes and `squeue -o %L` prints).
/// `None` for anything else, including `UNLIMITED`, `INVALID`, `NOT_SET`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (days, rest) = match text.split_once('-') {
        Some((d, rest)) => (d.parse::<u64>().ok()?, Some(rest)),
        None => (0, None),
    };
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let seconds = match rest {
        // With days: HH, HH:MM or HH:MM:SS.
        Some(rest) => {
            let parts: Vec<&str> = rest.split(':').collect();
            match parts.as_slice() {
                [h] => number(h)? * 3600,
                [h, m] => number(h)? * 3600 + number(m)? * 60,
                [h, m, s] => number(h)? * 3600 + number(m)? * 60 + number(s)?,
                _ => return None,
            }
        }
        // Without days: MM, MM:SS or HH:MM:SS.
        None => {
            let parts: Vec<&str> = text.split(':').collect();
            match parts.as_slice() {
                [m] => number(m)? * 60,
                [m, s] => number(m)? * 60 + number(s)?,
                [h, m, s] => number(h)? * 3600 + number(m)? * 60 + number(s)?,
                _ => return None,
            }
        }
    };
    Some(Duration::from_secs(days * 86_400 + seconds))
}

/// Formats a duration as Slurm's `[D-]HH:MM:SS` (whole seconds).
pub fn format_duration(duration: Duration) -> String {
    let total = duration.as_secs();
    let (days, rest) = (total / 86_400, total % 86_400);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    if days > 0 {
        format!("{days}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slurm_form_parses() {
        let s = |n| Some(Duration::from_secs(n));
        assert_eq!(parse_duration("30"), s(1800));
        assert_eq!(parse_duration("1:30"), s(90));
        assert_eq!(parse_duration("01:00:00"), s(3600));
        assert_eq!(parse_duration("2-3"), s(2 * 86_400 + 3 * 3600));
        assert_eq!(parse_duration("2-03:04"), s(2 * 86_400 + 3 * 3600 + 240));
        assert_eq!(parse_duration("1-00:00:05"), s(86_405));
        assert_eq!(parse_duration("UNLIMITED"), None);
        assert_eq!(parse_duration("INVALID"), None);
        assert_eq!(parse_duration("1:2:3:4"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("-5"), None);
    }

    #[test]
    fn formatting_round_trips() {
        for secs in [0, 59, 3600, 86_399, 86_400 + 61] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "00:01:30");
    }
}
