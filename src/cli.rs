//! The examples' tiny command-line parsing: `--flag value` pairs.

/// Prints `help` (what the example does, its flags and their defaults) and
/// exits with status 0 when an argument is `--help` or `-h`.
pub fn print_help_if_asked(help: &str) {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{}", help.trim_end());
        std::process::exit(0);
    }
}

/// Prints `help` to stderr after a bad argument and exits with status 2.
pub fn exit_with_usage(help: &str) -> ! {
    eprintln!("{}", help.trim_end());
    std::process::exit(2)
}

/// The arguments as `(flag, value)` pairs; `None` when one is missing its value.
pub fn flag_pairs() -> Option<Vec<(String, String)>> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if !raw.len().is_multiple_of(2) {
        return None;
    }
    Some(raw.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect())
}

/// `value` parsed as a `T`, or `usage()` (which prints the usage and exits).
pub fn value_or_usage<T: std::str::FromStr>(value: &str, usage: fn() -> !) -> T {
    value.parse().unwrap_or_else(|_| usage())
}

/// The items of `all` named in the comma-separated `value` (in that order);
/// `None` when a name is unknown.
pub fn named_items<T: Copy>(value: &str, all: &[T], name: impl Fn(T) -> &'static str) -> Option<Vec<T>> {
    value
        .split(',')
        .map(|n| all.iter().copied().find(|&a| name(a) == n))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_pick_items_in_order() {
        let all = [1, 2, 3];
        let name = |v: i32| ["one", "two", "three"][v as usize - 1];
        assert_eq!(super::named_items("three,one", &all, name), Some(vec![3, 1]));
        assert_eq!(super::named_items("one,four", &all, name), None);
    }
}
