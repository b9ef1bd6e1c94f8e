//! The backend services the gateway forwards to, by path prefix.

use http::Uri;

use crate::config::GatewaySettings;

/// One backend service.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// Path prefix, starting with `/` and without a trailing `/`.
    pub prefix: String,
    /// Base URL (scheme and authority).
    pub base: Uri,
}

/// The prefix table.
#[derive(Debug, Clone)]
pub struct Upstreams(Vec<Upstream>);

impl Upstreams {
    pub fn from_settings(settings: &GatewaySettings) -> anyhow::Result<Self> {
        Ok(Self(vec![
            Upstream::new("auth-service", "/auth-service", &settings.auth_url)?,
            Upstream::new("event-service", "/event-service", &settings.events_url)?,
        ]))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Upstream> {
        self.0.iter()
    }

    /// The service whose prefix `path` lies under (on a segment boundary:
    /// `/auth-service/x` and `/auth-service` match, `/auth-servicex` does not),
    /// and the path the service sees.
    pub fn resolve<'p>(&self, path: &'p str) -> Option<(&Upstream, &'p str)> {
        self.0.iter().find_map(|u| {
            let rest = path.strip_prefix(u.prefix.as_str())?;
            match rest {
                "" => Some((u, "/")),
                _ if rest.starts_with('/') => Some((u, rest)),
                _ => None,
            }
        })
    }
}

impl Upstream {
    pub fn new(name: &str, prefix: &str, url: &str) -> anyhow::Result<Self> {
        let base: Uri = url.parse().map_err(|e| anyhow::anyhow!("{name}: invalid URL `{url}`: {e}"))?;
        anyhow::ensure!(base.scheme_str() == Some("http"), "{name}: only http:// upstreams are supported, not `{url}`");
        anyhow::ensure!(base.authority().is_some(), "{name}: `{url}` names no host");
        Ok(Self { name: name.to_owned(), prefix: prefix.trim_end_matches('/').to_owned(), base })
    }

    /// The URI of `path_and_query` on this service.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let authority = self.base.authority().map(|a| a.as_str()).unwrap_or_default();
        Uri::builder().scheme("http").authority(authority).path_and_query(path_and_query).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_on_segment_boundaries_only() {
        let table = Upstreams::from_settings(&GatewaySettings::default()).unwrap();
        let name = |p| table.resolve(p).map(|(u, rest)| (u.name.as_str(), rest));
        assert_eq!(name("/auth-service/auth/login"), Some(("auth-service", "/auth/login")));
        assert_eq!(name("/auth-service"), Some(("auth-service", "/")));
        assert_eq!(name("/auth-service/"), Some(("auth-service", "/")));
        assert_eq!(name("/event-service/events/1"), Some(("event-service", "/events/1")));
        assert_eq!(name("/auth-servicex/auth/login"), None);
        assert_eq!(name("/auth"), None);
        assert_eq!(name("/"), None);
    }

    #[test]
    fn only_plain_http_upstreams_with_a_host() {
        assert!(Upstream::new("x", "/x", "ftp://a").is_err());
        assert!(Upstream::new("x", "/x", "not a url").is_err());
        let u = Upstream::new("x", "/x/", "http://127.0.0.1:9").unwrap();
        assert_eq!(u.prefix, "/x");
        assert_eq!(u.uri("/a?b=1").unwrap().to_string(), "http://127.0.0.1:9/a?b=1");
    }
}
