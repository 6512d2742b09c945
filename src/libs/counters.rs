//! A role's counters declared once: [`counters!`](crate::counters) makes the
//! struct of atomics the hot paths bump, a plain snapshot of it for logs,
//! tests and `/stats`, and the `/metrics` page, each counter's doc comment
//! being its Prometheus help. A counter added to the list shows everywhere;
//! none can be forgotten on one page.

use crate::libs::prometheus::{Exposition, MetricKind};

/// Declares `$stats` (one `AtomicU64` per counter, `Default`) and `$snapshot`
/// (the same fields as `u64`, `Serialize`), with `$stats::snapshot` and
/// `$snapshot::rows` (name, help, value). Each counter's `///` comment is
/// its help text.
#[macro_export]
macro_rules! counters {
    (
        $(#[$meta:meta])* $vis:vis struct $stats:ident => $snapshot:ident {
            $($(#[doc = $doc:literal])* $name:ident),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $stats {
            $($(#[doc = $doc])* pub $name: ::std::sync::atomic::AtomicU64,)*
        }

        #[doc = concat!("A copy of [`", stringify!($stats), "`] at one moment.")]
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, ::serde::Serialize)]
        $vis struct $snapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl $stats {
            /// The current values.
            pub fn snapshot(&self) -> $snapshot {
                $snapshot {
                    $($name: self.$name.load(::std::sync::atomic::Ordering::Relaxed),)*
                }
            }
        }

        impl $snapshot {
            /// Every counter: its name, its help (the doc comment) and value.
            pub fn rows(&self) -> ::std::vec::Vec<(&'static str, &'static str, u64)> {
                ::std::vec![$((stringify!($name), concat!($($doc),*), self.$name)),*]
            }
        }
    };
}

/// Writes `rows` (from a snapshot's `rows`) as counters named
/// `{prefix}_{name}_total`.
pub fn write_counters(page: &mut Exposition, prefix: &str, rows: &[(&str, &str, u64)]) {
    for (name, help, value) in rows {
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        page.single(
            &format!("{prefix}_{name}_total"),
            &help,
            MetricKind::Counter,
            value,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    crate::counters! {
        /// Two counters for the test.
        struct Pair => PairSnapshot {
            /// Things
            /// seen.
            seen,
            /// Things lost.
            lost,
        }
    }

    #[test]
    fn one_list_makes_the_snapshot_and_the_page() {
        let p = Pair::default();
        p.seen.fetch_add(3, Ordering::Relaxed);
        let snap = p.snapshot();
        assert_eq!((snap.seen, snap.lost), (3, 0));
        let mut page = Exposition::new();
        write_counters(&mut page, "reborn_test", &snap.rows());
        let text = page.finish();
        assert!(
            text.contains("# HELP reborn_test_seen_total Things seen.\n# TYPE reborn_test_seen_total counter\nreborn_test_seen_total 3\n"),
            "{text}"
        );
        assert!(text.contains("reborn_test_lost_total 0\n"), "{text}");
    }
}
