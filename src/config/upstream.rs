//! Upstream URLs as libpq writes them: `postgres://user:password@host:port[,host:port…]/db`
//! with `sslmode` and `sslrootcert`; passwords are masked whenever a URL is shown.

use std::fmt;

use super::ConfigError;

/// Whether and how the sidecar uses TLS upstream (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, without verifying it (libpq's default).
    Prefer,
    /// TLS always, without verifying the server.
    Require,
    /// TLS always; the server certificate must chain to `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where and as whom the sidecar connects upstream.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// Hosts tried in order; names are resolved again on every connection attempt.
    pub hosts: Vec<(String, u16)>,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<std::path::PathBuf>,
}

impl fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl UpstreamUrl {
    /// Parses `postgres://user:password@host:port[,host2:port2…]/dbname[?sslmode=…&sslrootcert=…]`
    /// (also `postgresql://`).
    pub fn parse(url: &str) -> Result<UpstreamUrl, ConfigError> {
        let err = |reason: &str| ConfigError::Url {
            url: mask_url(url),
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| err("must start with postgres://"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut sslmode = SslMode::Prefer;
        let mut sslrootcert = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "sslmode" => {
                    sslmode = SslMode::parse(&value).ok_or_else(|| {
                        err("sslmode must be disable, prefer, require, verify-ca or verify-full")
                    })?
                }
                "sslrootcert" => sslrootcert = Some(std::path::PathBuf::from(value)),
                other => return Err(err(&format!("URL parameter {other:?} is not supported"))),
            }
        }
        if matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && sslrootcert.is_none() {
            return Err(err(
                "sslmode=verify-ca and verify-full need sslrootcert=FILE",
            ));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostlist) = authority
            .rsplit_once('@')
            .ok_or_else(|| err("a user name is required (user@host)"))?;
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (percent_decode(u), Some(percent_decode(p))),
            None => (percent_decode(userinfo), None),
        };
        let mut hosts = Vec::new();
        for hostport in hostlist.split(',') {
            let (host, port) = match hostport.rsplit_once(':').filter(|(h, _)| !h.ends_with(':')) {
                Some((h, p)) if !h.is_empty() && (!h.starts_with('[') || h.ends_with(']')) => (
                    h,
                    p.parse::<u16>()
                        .map_err(|_| err("the port is not a number"))?,
                ),
                _ => (hostport, 5432),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(err("a host is required"));
            }
            hosts.push((host.to_owned(), port));
        }
        if user.is_empty() {
            return Err(err("a user name is required (user@host)"));
        }
        let dbname = if path.is_empty() {
            user.clone()
        } else {
            percent_decode(path)
        };
        Ok(UpstreamUrl {
            hosts,
            user,
            password,
            dbname,
            sslmode,
            sslrootcert,
        })
    }

    /// The URL with its password replaced by `****`.
    pub fn masked(&self) -> String {
        let pw = if self.password.is_some() { ":****" } else { "" };
        let hosts: Vec<String> = self.hosts.iter().map(|(h, p)| format!("{h}:{p}")).collect();
        let mut out = format!(
            "postgres://{}{pw}@{}/{}",
            self.user,
            hosts.join(","),
            self.dbname
        );
        if self.sslmode != SslMode::Prefer {
            out.push_str(&format!("?sslmode={}", self.sslmode.as_str()));
        }
        if let Some(root) = &self.sslrootcert {
            out.push_str(if self.sslmode != SslMode::Prefer {
                "&"
            } else {
                "?"
            });
            out.push_str(&format!("sslrootcert={}", root.display()));
        }
        out
    }
}

/// The URL text with the password (between `user:` and `@`) replaced by `****`.
fn mask_url(url: &str) -> String {
    let span = url.find("://").and_then(|scheme| {
        let start = scheme + 3;
        let at = start + url[start..].rfind('@')?;
        let colon = start + url[start..at].find(':')?;
        Some((colon + 1, at))
    });
    match span {
        Some((start, end)) => format!("{}****{}", &url[..start], &url[end..]),
        None => url.to_owned(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
