//! `s3://BUCKET[/PREFIX]?endpoint=URL&region=R` and the usual AWS
//! configuration: credentials and region from the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL_S3`,
//! `AWS_ENDPOINT_URL`), else from the profile (`AWS_PROFILE`, default
//! `default`) in `~/.aws/credentials` and `~/.aws/config`
//! (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`).

use std::path::PathBuf;

use anyhow::Result;

use super::client::{Credentials, Endpoint, decode};
use crate::error::{denied, usage};

#[derive(Debug)]
pub struct S3Url {
    pub bucket: String,
    /// Object names start with this (no leading or trailing `/`).
    pub prefix: String,
    pub endpoint: Endpoint,
    pub region: String,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `key = value` lines of the `[section]` of an INI file.
fn ini_section(path: &PathBuf, section: &str) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') && line.ends_with(']') {
            inside = line[1..line.len() - 1].trim() == section;
        } else if inside && let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn aws_file(var: &str, name: &str) -> Option<PathBuf> {
    env(var)
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".aws").join(name)))
}

fn profile() -> String {
    env("AWS_PROFILE").unwrap_or_else(|| "default".to_string())
}

/// A setting of the profile in `~/.aws/config` (`[profile NAME]`, or
/// `[default]`), or in `~/.aws/credentials` (`[NAME]`).
fn profile_setting(name: &str) -> Option<String> {
    let p = profile();
    let config_section = if p == "default" {
        "default".to_string()
    } else {
        format!("profile {p}")
    };
    let from = |file: Option<PathBuf>, section: &str| {
        file.and_then(|f| {
            ini_section(&f, section)
                .into_iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v)
        })
    };
    from(aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials"), &p)
        .or_else(|| from(aws_file("AWS_CONFIG_FILE", "config"), &config_section))
}

/// The credentials to sign with: the environment's, else the profile's.
pub fn credentials() -> Result<Credentials> {
    if let (Some(key_id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Credentials {
            key_id,
            secret,
            token: env("AWS_SESSION_TOKEN"),
        });
    }
    match (
        profile_setting("aws_access_key_id"),
        profile_setting("aws_secret_access_key"),
    ) {
        (Some(key_id), Some(secret)) => Ok(Credentials {
            key_id,
            secret,
            token: profile_setting("aws_session_token"),
        }),
        _ => Err(denied(format!(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give \
             profile {:?} aws_access_key_id and aws_secret_access_key in ~/.aws/credentials \
             (dlock reads no instance role, SSO or credential process)",
            profile()
        ))),
    }
}

impl S3Url {
    pub fn parse(url: &str) -> Result<S3Url> {
        let shown = crate::backend::redact_url(url);
        let bad = |why: &str| {
            usage(format!(
                "bad S3 URL {shown}: {why} (expected s3://BUCKET[/PREFIX][?endpoint=URL&region=R])"
            ))
        };
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("not s3://"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.contains('@') {
            return Err(bad(
                "credentials do not go in the URL: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ));
        }
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !valid {
            return Err(bad(
                "a bucket name is 3 to 63 lowercase letters, digits, '.' or '-'",
            ));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
            return Err(bad("a prefix has no empty, '.' or '..' parts"));
        }
        let mut endpoint = None;
        let mut region = None;
        let mut path_style = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v);
            match k {
                "endpoint" => endpoint = Some(v),
                "region" => region = Some(v),
                "path_style" => path_style = Some(v != "false" && v != "0"),
                _ => return Err(bad(&format!("unknown parameter {k:?}"))),
            }
        }
        let region = region
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| profile_setting("region"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = endpoint
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let endpoint = match endpoint {
            Some(e) => {
                let (https, authority) = if let Some(a) = e.strip_prefix("https://") {
                    (true, a)
                } else if let Some(a) = e.strip_prefix("http://") {
                    (false, a)
                } else {
                    return Err(bad(
                        "endpoint= is http://HOST[:PORT] or https://HOST[:PORT]",
                    ));
                };
                let authority = authority.trim_end_matches('/');
                if authority.is_empty() || authority.contains(['/', '@', '?']) {
                    return Err(bad(
                        "endpoint= is http://HOST[:PORT] or https://HOST[:PORT]",
                    ));
                }
                Endpoint {
                    https,
                    authority: authority.to_string(),
                    // S3-compatible stores (MinIO, SeaweedFS, R2) all
                    // take path-style requests.
                    path_style: path_style.unwrap_or(true),
                }
            }
            None => Endpoint {
                https: true,
                authority: format!("s3.{region}.amazonaws.com"),
                // A bucket with dots in its name cannot be virtual-hosted
                // over TLS (the certificate is for *.s3...).
                path_style: path_style.unwrap_or(bucket.contains('.')),
            },
        };
        Ok(S3Url {
            bucket: bucket.to_string(),
            prefix,
            endpoint,
            region,
        })
    }

    /// The object holding the lock of `key` in `namespace`.
    pub fn object(&self, namespace: &str, key: &str) -> String {
        format!("{}{namespace}/{key}{}", self.dir(), super::SUFFIX)
    }

    /// The prefix with its `/`, or nothing.
    pub fn dir(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = S3Url::parse(
            "s3://locks/ci/jobs?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=eu-west-1",
        )
        .unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("locks", "ci/jobs"));
        assert_eq!(u.endpoint.authority, "127.0.0.1:9000");
        assert!(u.endpoint.path_style && !u.endpoint.https);
        assert_eq!(u.region, "eu-west-1");
        assert_eq!(u.object("dlock", "a/b"), "ci/jobs/dlock/a/b.lock");
        let u = S3Url::parse("s3://locks?region=eu-west-1&endpoint=https://s3.example").unwrap();
        assert_eq!(u.object("ns", "k"), "ns/k.lock");
        assert!(u.endpoint.https);
        assert!(S3Url::parse("s3://Bad_Bucket").is_err());
        assert!(S3Url::parse("s3://id:secret@bucket").is_err());
        assert!(S3Url::parse("s3://bucket?colour=blue").is_err());
        assert!(S3Url::parse("s3://bucket/a/../b").is_err());
    }
}
