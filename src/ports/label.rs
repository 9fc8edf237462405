//! Naming a port's peers in `status`.

/// A label for `status` (which keeps 32 bytes): `prefix` and as much of the end of
/// `detail` as fits, since the end of a path (the file name) tells sockets apart.
pub(crate) fn label(prefix: &str, detail: &str) -> String {
    const LIMIT: usize = 32;
    let room = LIMIT.saturating_sub(prefix.len());
    if detail.len() <= room {
        return format!("{prefix}{detail}");
    }
    let mut start = detail.len() - room.saturating_sub(2);
    while !detail.is_char_boundary(start) {
        start += 1;
    }
    format!("{prefix}..{}", &detail[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keeps_the_end_of_a_long_path() {
        assert_eq!(label("stream#1 ", "/tmp/a.sock"), "stream#1 /tmp/a.sock");
        let long = label("stream#12 ", "/tmp/.tmpAbCdEf/some/deep/dir/vm0.sock");
        assert_eq!(long.len(), 32);
        assert!(long.starts_with("stream#12 .."));
        assert!(long.ends_with("vm0.sock"));
    }
}
