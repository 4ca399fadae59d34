//! Which service a backend URL names: one table of schemes, read by
//! [`connect`], by the config's key rules (each service's key layout) and
//! by messages that name the service. The table is complete whichever
//! backends were built (cargo features), so that a URL of one left out is
//! told so by name, and keys and redaction follow the same rules.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

#[cfg(feature = "etcd")]
use super::etcd;
#[cfg(feature = "redis")]
use super::redis;
#[cfg(feature = "s3")]
use super::s3;
#[cfg(feature = "zookeeper")]
use super::zk;
use super::{Backend, sql, typed};
use crate::error::usage;

/// A lock service dlock speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Sqlite,
    Redis,
    ZooKeeper,
    Postgres,
    MySql,
    Etcd,
    S3,
}

/// Every URL scheme, and the service it names.
pub const SCHEMES: &[(&str, Service)] = &[
    ("sqlite", Service::Sqlite),
    ("redis", Service::Redis),
    ("rediss", Service::Redis),
    ("redis+sentinel", Service::Redis),
    ("redis+cluster", Service::Redis),
    ("zk", Service::ZooKeeper),
    ("postgres", Service::Postgres),
    ("postgresql", Service::Postgres),
    ("mysql", Service::MySql),
    ("mariadb", Service::MySql),
    ("etcd", Service::Etcd),
    ("etcds", Service::Etcd),
    ("s3", Service::S3),
];

impl Service {
    /// The service a URL names, by its scheme (any case).
    pub fn of(url: &str) -> Option<Service> {
        let scheme = url.split(':').next().unwrap_or_default();
        SCHEMES
            .iter()
            .find(|(s, _)| s.eq_ignore_ascii_case(scheme))
            .map(|(_, service)| *service)
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Service::Sqlite => "SQLite",
            Service::Redis => "Redis",
            Service::ZooKeeper => "ZooKeeper",
            Service::Postgres => "PostgreSQL",
            Service::MySql => "MySQL",
            Service::Etcd => "etcd",
            Service::S3 => "S3",
        }
    }

    /// The cargo feature that builds it; None: always built.
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Service::Sqlite => None,
            Service::Redis => Some("redis"),
            Service::ZooKeeper => Some("zookeeper"),
            Service::Postgres => Some("postgres"),
            Service::MySql => Some("mysql"),
            Service::Etcd => Some("etcd"),
            Service::S3 => Some("s3"),
        }
    }

    /// Whether this dlock was built with it.
    pub fn built(self) -> bool {
        match self {
            Service::Sqlite => true,
            Service::Redis => cfg!(feature = "redis"),
            Service::ZooKeeper => cfg!(feature = "zookeeper"),
            Service::Postgres => cfg!(feature = "postgres"),
            Service::MySql => cfg!(feature = "mysql"),
            Service::Etcd => cfg!(feature = "etcd"),
            Service::S3 => cfg!(feature = "s3"),
        }
    }
}

/// What a URL of a backend this dlock was built without is told.
pub fn not_built(service: Service) -> String {
    let feature = service.feature().unwrap_or_default();
    format!(
        "this dlock was built without the {} backend (cargo feature \"{feature}\"); \
         rebuild with --features {feature}",
        service.name()
    )
}

/// The schemes as the unknown-URL message lists them: `sqlite:`,
/// `redis://`, ...
fn schemes_listed() -> String {
    SCHEMES
        .iter()
        .map(|(s, service)| match service {
            Service::Sqlite => format!("{s}:"),
            _ => format!("{s}://"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Connect to the backend named by the URL(s).
pub async fn connect(urls: &[String], connect_timeout: Duration) -> Result<Arc<dyn Backend>> {
    let first = &urls[0];
    if urls.len() > 1 && !urls.iter().all(|u| u.starts_with("redis://")) {
        return Err(usage(format!(
            "several backend URLs are only meaningful for Redlock (redis:// URLs), got {}",
            urls.iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let Some(service) = Service::of(first) else {
        return Err(usage(format!(
            "unknown backend URL {}: expected one of {}",
            redact_url(first),
            schemes_listed()
        )));
    };
    let t = connect_timeout;
    let inner: Arc<dyn Backend> = match service {
        Service::Sqlite => Arc::new(sql::connect_sqlite(first, t).await?),
        #[cfg(feature = "redis")]
        Service::Redis => Arc::new(redis::RedisBackend::connect(urls, t).await?),
        #[cfg(feature = "postgres")]
        Service::Postgres => Arc::new(sql::connect_postgres(first, t).await?),
        #[cfg(feature = "mysql")]
        Service::MySql => Arc::new(sql::connect_mysql(first, t).await?),
        #[cfg(feature = "zookeeper")]
        Service::ZooKeeper => Arc::new(zk::ZkBackend::new(first, t)?),
        #[cfg(feature = "etcd")]
        Service::Etcd => Arc::new(etcd::EtcdBackend::connect(first, t).await?),
        #[cfg(feature = "s3")]
        Service::S3 => Arc::new(s3::S3Backend::new(first, t)?),
        // The backends this dlock was built without (none by default,
        // where this arm is unreachable).
        #[allow(unreachable_patterns)]
        left_out => return Err(usage(not_built(left_out))),
    };
    // Every error from here on is typed at the boundary.
    Ok(Arc::new(typed::Typed(inner)))
}

/// A URL with the password (if any) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{}://{masked}@{}", &url[..scheme_end], &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite:/tmp/x.db"), "sqlite:/tmp/x.db");
        assert_eq!(redact_url("mysql://u:p@ss@h/db"), "mysql://u:***@h/db");
    }

    #[test]
    fn every_scheme_names_its_service() {
        assert_eq!(Service::of("REDIS+Cluster://h"), Some(Service::Redis));
        assert_eq!(Service::of("sqlite:/tmp/x.db"), Some(Service::Sqlite));
        assert_eq!(Service::of("s3://bucket"), Some(Service::S3));
        assert_eq!(Service::of("consul://h"), None);
        assert!(schemes_listed().starts_with("sqlite:, redis://, rediss://"));
        assert!(schemes_listed().ends_with("etcd://, etcds://, s3://"));
    }

    #[test]
    fn a_backend_left_out_is_named_with_its_feature() {
        assert_eq!(
            not_built(Service::Redis),
            "this dlock was built without the Redis backend (cargo feature \"redis\"); \
             rebuild with --features redis"
        );
        assert!(not_built(Service::ZooKeeper).ends_with("--features zookeeper"));
        assert!(not_built(Service::MySql).contains("the MySQL backend"));
        // SQLite is always built; every other service has a feature.
        assert!(Service::Sqlite.built());
        for (_, service) in SCHEMES {
            assert_eq!(service.feature().is_none(), *service == Service::Sqlite);
        }
    }

    /// A build without Redis (`cargo test --lib --no-default-features`):
    /// its URLs are a usage error naming the feature, before any connect.
    #[cfg(not(feature = "redis"))]
    #[tokio::test]
    async fn a_url_of_a_backend_left_out_is_a_usage_error() {
        let urls = vec!["redis://127.0.0.1:1".to_string()];
        let err = connect(&urls, Duration::from_secs(1)).await.err().unwrap();
        assert_eq!(
            crate::error::exit_code_of(&err),
            crate::exit_code::USAGE,
            "{err:#}"
        );
        assert!(format!("{err:#}").contains("rebuild with --features redis"));
    }
}
