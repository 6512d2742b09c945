//! Reading the text of a redis-server's `INFO` reply: `name:value` lines
//! under `# Section` headers, CRLF-terminated.

/// One `INFO` reply's text.
#[derive(Clone, Copy)]
pub(crate) struct InfoText<'a>(pub(crate) &'a str);

impl<'a> InfoText<'a> {
    /// The value of field `name`, trimmed; `None` if absent.
    pub(crate) fn field(&self, name: &str) -> Option<&'a str> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }

    /// Field `name` as a count: 0 when absent, unreadable or negative (Redis
    /// reports offsets of -1 before a replica's first sync).
    pub(crate) fn count(&self, name: &str) -> u64 {
        self.field(name)
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(0, |v| u64::try_from(v).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_counts_are_read() {
        let info =
            InfoText("# Replication\r\nrole:slave\r\nslave_repl_offset:-1\r\nmaster_repl_offset:42\r\n");
        assert_eq!(info.field("role"), Some("slave"));
        assert_eq!(info.field("rol"), None, "a prefix is not a field");
        assert_eq!(info.count("slave_repl_offset"), 0);
        assert_eq!(info.count("master_repl_offset"), 42);
        assert_eq!(info.count("missing"), 0);
    }
}
