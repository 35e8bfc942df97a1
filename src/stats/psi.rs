//! Pressure stall information: the parser of a cgroup v2 `cpu.pressure`, `memory.pressure` or
//! `io.pressure` file (also `/proc/pressure/*`), a pure function over bounded bytes.
//!
//! ```text
//! some avg10=0.36 avg60=0.06 avg300=0.01 total=45152
//! full avg10=0.00 avg60=0.00 avg300=0.00 total=41860
//! ```
//!
//! The kernel prints the averages as percentages with two decimals and `total` in microseconds.
//! The averages are kept in hundredths of a percent (integers: exact, and the counters stay
//! `Eq`); the CRI conversion divides.

/// The longest pressure file accepted (the kernel's is under 200 bytes).
pub const MAX_LEN: usize = 1024;

/// One line of a pressure file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PsiLine {
    /// Time stalled since the cgroup was created, microseconds.
    pub total_us: u64,
    /// Share of time stalled over 10 s, in hundredths of a percent (0..=10000).
    pub avg10: u32,
    pub avg60: u32,
    pub avg300: u32,
}

/// A pressure file: `some` always, `full` where the kernel reports it (cpu.pressure had no
/// `full` line before Linux 5.13).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    pub some: PsiLine,
    pub full: Option<PsiLine>,
}

/// Why a pressure file could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PsiError {
    /// Longer than [`MAX_LEN`].
    #[error("pressure file longer than {MAX_LEN} bytes")]
    TooLong,
    /// Not text.
    #[error("pressure file is not UTF-8")]
    NotText,
    /// A line other than `some`/`full` with the four fields, or a field out of range.
    #[error("bad pressure line {0:?}")]
    BadLine(String),
    /// The same kind twice.
    #[error("pressure line {0:?} repeated")]
    Repeated(&'static str),
    /// No `some` line.
    #[error("pressure file without a \"some\" line")]
    NoSome,
}

/// Parses a whole pressure file.
pub fn parse(bytes: &[u8]) -> Result<Pressure, PsiError> {
    if bytes.len() > MAX_LEN {
        return Err(PsiError::TooLong);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| PsiError::NotText)?;
    let (mut some, mut full) = (None, None);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let bad = || PsiError::BadLine(line.chars().take(80).collect());
        let mut words = line.split_ascii_whitespace();
        let (slot, kind) = match words.next() {
            Some("some") => (&mut some, "some"),
            Some("full") => (&mut full, "full"),
            _ => return Err(bad()),
        };
        if slot.is_some() {
            return Err(PsiError::Repeated(kind));
        }
        *slot = Some(parse_line(words).ok_or_else(bad)?);
    }
    Ok(Pressure {
        some: some.ok_or(PsiError::NoSome)?,
        full,
    })
}

/// `avg10=A avg60=B avg300=C total=T`, in this order, nothing after.
fn parse_line<'a>(mut words: impl Iterator<Item = &'a str>) -> Option<PsiLine> {
    let mut field = |key: &str| words.next()?.strip_prefix(key)?.strip_prefix('=');
    let avg10 = percent(field("avg10")?)?;
    let avg60 = percent(field("avg60")?)?;
    let avg300 = percent(field("avg300")?)?;
    let total_us = digits(field("total")?)?;
    if words.next().is_some() {
        return None;
    }
    Some(PsiLine {
        total_us,
        avg10,
        avg60,
        avg300,
    })
}

/// A percentage with up to two decimals ("72.08", "100.00", "3") in hundredths, at most 100 %.
fn percent(s: &str) -> Option<u32> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, "0"));
    if frac.is_empty() || frac.len() > 2 || whole.len() > 3 {
        return None;
    }
    let whole = digits(whole)?;
    let frac = digits(frac)? * if frac.len() == 1 { 10 } else { 1 };
    let v = whole * 100 + frac;
    (v <= 10_000).then_some(v as u32)
}

/// Plain decimal digits (no sign, no spaces) that fit a u64.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_file_with_both_lines() {
        let p = parse(
            b"some avg10=72.08 avg60=32.41 avg300=14.90 total=6564232292\n\
              full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )
        .unwrap();
        assert_eq!(
            p.some,
            PsiLine {
                total_us: 6564232292,
                avg10: 7208,
                avg60: 3241,
                avg300: 1490,
            }
        );
        assert_eq!(p.full, Some(PsiLine::default()));
    }

    #[test]
    fn an_old_cpu_file_has_no_full_line() {
        let p = parse(b"some avg10=100.00 avg60=5.5 avg300=3 total=1\n").unwrap();
        assert_eq!(
            (p.some.avg10, p.some.avg60, p.some.avg300),
            (10000, 550, 300)
        );
        assert_eq!(p.full, None);
    }

    #[test]
    fn malformed_files_are_errors_never_zeros() {
        let bad: &[&[u8]] = &[
            b"",
            b"\n",
            b"full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            b"some avg10=0.00 avg60=0.00 avg300=0.00\n",
            b"some avg10=0.00 avg60=0.00 avg300=0.00 total=\n",
            b"some avg10=0.00 avg60=0.00 avg300=0.00 total=-1\n",
            b"some avg10=0.00 avg60=0.00 avg300=0.00 total=99999999999999999999\n",
            b"some avg10=0.00 avg60=0.00 avg300=0.00 total=1 extra=2\n",
            b"some avg60=0.00 avg10=0.00 avg300=0.00 total=1\n",
            b"some avg10=100.01 avg60=0.00 avg300=0.00 total=1\n",
            b"some avg10=1.234 avg60=0.00 avg300=0.00 total=1\n",
            b"some avg10=1. avg60=0.00 avg300=0.00 total=1\n",
            b"some avg10=.5 avg60=0.00 avg300=0.00 total=1\n",
            b"some avg10=+1 avg60=0.00 avg300=0.00 total=1\n",
            b"some avg10 = 1 avg60=0.00 avg300=0.00 total=1\n",
            b"half avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            b"some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nsome avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            b"some avg10=0.00 avg60=0.00 avg300=0.00 total=0\xff\n",
        ];
        for b in bad {
            assert!(parse(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
        assert_eq!(parse(&[b' '; MAX_LEN + 1]), Err(PsiError::TooLong));
        assert_eq!(
            parse(b"some avg10=0 avg60=0 avg300=0 total=0\nsome avg10=0 avg60=0 avg300=0 total=0"),
            Err(PsiError::Repeated("some"))
        );
    }
}
