//! Human sizes on the command line: `4GiB`, `512MiB`, `10G`, `4096`. Suffixes are binary
//! (K = KiB = 1024); a bare number is bytes.

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size \"{s}\": expected a number with an optional unit like 4GiB")
    })?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        other => return Err(format!("invalid size \"{s}\": unknown unit \"{other}\"")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("invalid size \"{s}\": too large"))
}

/// `10 GiB`, `512 MiB`, `4096 B`: the largest unit that divides exactly, else one decimal.
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut i = 0;
    let mut v = n as f64;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if v.fract() == 0.0 {
        format!("{} {}", v as u64, UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_nonsense() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1k").unwrap(), 1024);
        assert!(parse_size("abc").is_err());
        assert!(parse_size("4XB").is_err());
        assert!(parse_size("99999999999PiB").is_err());
        assert_eq!(format_size(10 << 30), "10 GiB");
        assert_eq!(format_size(1536), "1.5 KiB");
    }
}
