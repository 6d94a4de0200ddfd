//! What one request asks to see of the backends, from its query string:
//! `filter` (part of the name or address, any case), `state` (`up`,
//! `down`, `disabled`, `draining`, or `problems` for all but up; a
//! backup on `standby` counts as up), `page` (from 1) and `per_page`.
//! Rows come backends that are not up first,
//! then in configured order; the per-state summary always counts them
//! all. The HTML page shows [`PAGE`] rows per page unless asked otherwise;
//! `/status.json` gives every row unless `page` or `per_page` is given.

use super::{Report, Service};

/// Rows per page on the HTML page.
pub const PAGE: usize = 100;
/// The most rows one page may ask for.
pub const MAX_PAGE: usize = 10_000;

/// A request's view of the backends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub filter: String,
    pub state: Option<String>,
    /// From 1.
    pub page: usize,
    /// `None`: every row.
    pub per_page: Option<usize>,
}

/// The states a `state=` may name.
pub const STATES: [&str; 5] = ["up", "down", "disabled", "draining", "problems"];

impl View {
    /// The view a query string asks for (`html`: paged by default). An
    /// unknown parameter or a bad value is a one-line error naming it.
    pub fn parse(query: &str, html: bool) -> Result<View, String> {
        let mut v = View {
            page: 1,
            per_page: html.then_some(PAGE),
            ..View::default()
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "filter" => v.filter = value.trim().to_string(),
                "state" if value.is_empty() || value == "all" => v.state = None,
                "state" if STATES.contains(&&*value) => v.state = Some(value.into_owned()),
                "state" => {
                    return Err(format!(
                        "invalid state '{}': expected {} or all",
                        clip(&value),
                        STATES.join(", ")
                    ));
                }
                "page" => {
                    v.page = number(&key, &value, 1, usize::MAX)?;
                    v.per_page.get_or_insert(PAGE);
                }
                "per_page" if value == "all" => v.per_page = None,
                "per_page" => v.per_page = Some(number(&key, &value, 1, MAX_PAGE)?),
                other => {
                    return Err(format!(
                        "unknown parameter '{}': expected filter, state, page or per_page",
                        clip(other)
                    ));
                }
            }
        }
        Ok(v)
    }

    /// The query string for this view at `page` (for links).
    pub fn query(&self, page: usize) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if !self.filter.is_empty() {
            q.append_pair("filter", &self.filter);
        }
        if let Some(s) = &self.state {
            q.append_pair("state", s);
        }
        if page > 1 {
            q.append_pair("page", &page.to_string());
        }
        if self.per_page != Some(PAGE) {
            let n = self.per_page.map_or("all".to_string(), |n| n.to_string());
            q.append_pair("per_page", &n);
        }
        q.finish()
    }

    /// Keep only the rows asked for in every service of `report` (after
    /// rates are filled in: they need every backend).
    pub fn apply(&self, report: &mut Report) {
        for s in &mut report.services {
            self.apply_to(s);
        }
    }

    fn apply_to(&self, s: &mut Service) {
        let needle = self.filter.to_lowercase();
        let mut rows: Vec<_> = std::mem::take(&mut s.backends)
            .into_iter()
            .filter(|b| match self.state.as_deref() {
                None => true,
                Some("problems") => !counts_as_up(b.state),
                Some("up") => counts_as_up(b.state),
                Some(st) => b.state == st,
            })
            .filter(|b| {
                needle.is_empty()
                    || b.name.to_lowercase().contains(&needle)
                    || b.address.to_lowercase().contains(&needle)
            })
            .collect();
        // Stable: configured order within each group.
        rows.sort_by_key(|b| counts_as_up(b.state));
        s.backends_matched = rows.len();
        match self.per_page {
            None => s.offset = 0,
            Some(n) => {
                let offset = (self.page - 1).saturating_mul(n).min(rows.len());
                s.offset = offset;
                rows.drain(..offset);
                rows.truncate(n);
            }
        }
        s.backends = rows;
    }

    /// Pages for `matched` rows (at least 1).
    pub fn pages(&self, matched: usize) -> usize {
        match self.per_page {
            None => 1,
            Some(n) => matched.div_ceil(n).max(1),
        }
    }
}

/// Whether a backend in `state` is one the `up` filter shows (and
/// `problems` does not): up, or a backup standing by while a primary is
/// up (healthy, and counted as up in the summary, `StateCounts::count`).
fn counts_as_up(state: &str) -> bool {
    matches!(state, "up" | "standby")
}

fn number(key: &str, value: &str, min: usize, max: usize) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "invalid {key} '{}': expected a number {min}..={max}",
            clip(value)
        )),
    }
}

/// Keep echoed input short.
fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_in_one_line() {
        let v = View::parse("filter=10.0.%31&state=down&page=2", true).unwrap();
        assert_eq!(v.filter, "10.0.1");
        assert_eq!(v.state.as_deref(), Some("down"));
        assert_eq!((v.page, v.per_page), (2, Some(PAGE)));
        assert_eq!(View::parse("", false).unwrap().per_page, None);
        assert_eq!(View::parse("page=3", false).unwrap().per_page, Some(PAGE));
        assert_eq!(View::parse("per_page=all", true).unwrap().per_page, None);
        assert!(
            View::parse("state=sideways", true)
                .unwrap_err()
                .starts_with("invalid state 'sideways'")
        );
        assert!(
            View::parse("page=0", true)
                .unwrap_err()
                .contains("expected a number 1..=")
        );
        assert!(
            View::parse("colour=red", true)
                .unwrap_err()
                .starts_with("unknown parameter 'colour'")
        );
        let q = View::parse("filter=a b&state=down", true).unwrap().query(2);
        assert_eq!(q, "filter=a+b&state=down&page=2");
        assert_eq!(View::parse(&q, true).unwrap().page, 2);
    }
}
