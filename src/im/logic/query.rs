//! The query string of goim's HTTP API, where lists are repeated parameters
//! (`mids=1&mids=2`, gin's `BindQuery`). A small decoder of its own: the
//! `application/x-www-form-urlencoded` rules (`+` is a space, `%XX` a byte),
//! then typed getters that say which parameter is missing or malformed.
//! Imports nothing of the crate.

use std::str::FromStr;

/// Why a request's parameters were refused (code -400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A required parameter is absent or empty.
    #[error("missing required parameter '{0}'")]
    Missing(&'static str),
    /// A list given as one comma-separated value.
    #[error(
        "parameter '{name}' = '{value}' is one value: repeat '{name}' for each ({name}=1&{name}=2), as goim does"
    )]
    Joined { name: &'static str, value: String },
    /// A parameter does not parse as its type.
    #[error("parameter '{name}' = '{value}' is not {want}")]
    Invalid {
        name: &'static str,
        value: String,
        want: &'static str,
    },
}

/// A decoded query string, in order, repeats kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl QueryParams {
    /// Decodes `raw` (the part after `?`, without it).
    pub fn parse(raw: &str) -> QueryParams {
        let pairs = raw
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect();
        QueryParams { pairs }
    }

    /// Every value of `name`, in order, empty ones skipped.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// The first non-empty value of `name`, parsed.
    ///
    /// # Errors
    /// A value that does not parse.
    pub fn optional<T: FromStr>(
        &self,
        name: &'static str,
        want: &'static str,
    ) -> Result<Option<T>, QueryError> {
        self.all(name).next().map(|v| parse(name, v, want)).transpose()
    }

    /// The first non-empty value of `name`, parsed.
    ///
    /// # Errors
    /// It is missing or does not parse.
    pub fn required<T: FromStr>(&self, name: &'static str, want: &'static str) -> Result<T, QueryError> {
        self.optional(name, want)?.ok_or(QueryError::Missing(name))
    }

    /// Every value of `name`, parsed; at least one.
    ///
    /// # Errors
    /// None given, or one does not parse.
    pub fn list<T: FromStr>(&self, name: &'static str, want: &'static str) -> Result<Vec<T>, QueryError> {
        let values = self.many(name, want)?;
        if values.is_empty() {
            return Err(QueryError::Missing(name));
        }
        Ok(values)
    }

    /// Every value of `name`, parsed; perhaps none.
    ///
    /// # Errors
    /// One does not parse.
    pub fn many<T: FromStr>(&self, name: &'static str, want: &'static str) -> Result<Vec<T>, QueryError> {
        self.all(name)
            .map(|v| {
                parse(name, v, want).map_err(|e| {
                    if v.contains(',') {
                        QueryError::Joined {
                            name,
                            value: v.to_string(),
                        }
                    } else {
                        e
                    }
                })
            })
            .collect()
    }
}

fn parse<T: FromStr>(name: &'static str, value: &str, want: &'static str) -> Result<T, QueryError> {
    value.parse().map_err(|_| QueryError::Invalid {
        name,
        value: value.to_string(),
        want,
    })
}

/// Form-urlencoded decoding; a broken `%` escape is kept literally.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_params_make_lists() {
        let q = QueryParams::parse("operation=1000&mids=1&mids=2&mids=&x");
        assert_eq!(q.required::<i32>("operation", "an int32"), Ok(1000));
        assert_eq!(q.list::<i64>("mids", "an int64"), Ok(vec![1, 2]));
        let joined = QueryParams::parse("mids=1,2");
        assert_eq!(
            joined.list::<i64>("mids", "an int64").map_err(|e| e.to_string()),
            Err(
                "parameter 'mids' = '1,2' is one value: repeat 'mids' for each (mids=1&mids=2), as goim does"
                    .into()
            )
        );
        assert_eq!(q.optional::<i32>("speed", "an int32"), Ok(None));
    }

    #[test]
    fn missing_and_malformed_params_are_named() {
        let q = QueryParams::parse("operation=abc&type=");
        assert_eq!(
            q.required::<i32>("operation", "an int32"),
            Err(QueryError::Invalid {
                name: "operation",
                value: "abc".into(),
                want: "an int32"
            })
        );
        assert_eq!(
            q.required::<String>("type", "text"),
            Err(QueryError::Missing("type"))
        );
        assert_eq!(q.list::<String>("keys", "text"), Err(QueryError::Missing("keys")));
        assert_eq!(q.many::<String>("keys", "text"), Ok(vec![]));
        let msg = QueryError::Missing("room").to_string();
        assert_eq!(msg, "missing required parameter 'room'");
    }

    #[test]
    fn values_are_form_decoded() {
        let q = QueryParams::parse("keys=a%2Fb&keys=c+d&keys=100%25&keys=bad%zz&keys=%E4%BD%A0");
        let keys: Vec<&str> = q.all("keys").collect();
        assert_eq!(keys, ["a/b", "c d", "100%", "bad%zz", "你"]);
        assert_eq!(QueryParams::parse(""), QueryParams::default());
    }
}
