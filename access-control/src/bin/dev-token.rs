//! Prints a bearer token for the local stack.
//!
//! Reads the same `JWT_*` variables as the services (HS* only) and prints the
//! token, and nothing else, on stdout:
//!
//! ```text
//! dev-token [--scope read|write|admin]... [--customer <uuid>] [--subject <s>] [--ttl-secs <n>]
//! ```
//!
//! `--scope` repeats or takes a comma list; the default is `read,write`.

use std::time::Duration;

use access_control::{issue_token, AuthConfig, Scope, TokenRequest};
use anyhow::{bail, Context};
use uuid::Uuid;

const USAGE: &str = "usage: dev-token [--scope read|write|admin]... [--customer <uuid>] \
                     [--subject <s>] [--ttl-secs <n>]";

fn main() -> anyhow::Result<()> {
    let Some(request) = parse_args(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(());
    };
    let config = AuthConfig::from_env().context("reading the JWT_* environment")?;
    println!("{}", issue_token(&config, &request)?);
    Ok(())
}

/// `None` when help was asked for.
fn parse_args(args: impl IntoIterator<Item = String>) -> anyhow::Result<Option<TokenRequest>> {
    let mut scopes = Vec::new();
    let mut customer_id = None;
    let mut subject = "dev".to_owned();
    let mut ttl_secs = 3600;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let Some(value) = inline.or_else(|| args.next()) else {
            bail!("{flag} needs a value\n{USAGE}");
        };
        match flag.as_str() {
            "--scope" => {
                for word in value.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                    scopes.push(word.parse::<Scope>()?);
                }
            }
            "--customer" => {
                customer_id = Some(
                    Uuid::parse_str(&value)
                        .with_context(|| format!("--customer {value:?} is not a UUID"))?,
                );
            }
            "--subject" => subject = value,
            "--ttl-secs" => {
                ttl_secs = value
                    .parse()
                    .with_context(|| format!("--ttl-secs {value:?} is not a number of seconds"))?;
            }
            _ => bail!("unknown argument {flag:?}\n{USAGE}"),
        }
    }
    if scopes.is_empty() {
        scopes = vec![Scope::Read, Scope::Write];
    }
    Ok(Some(TokenRequest {
        subject,
        scopes,
        customer_id,
        ttl: Duration::from_secs(ttl_secs),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Option<TokenRequest>> {
        parse_args(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn defaults() {
        let request = parse(&[]).expect("parses").expect("not help");
        assert_eq!(request.subject, "dev");
        assert_eq!(request.scopes, vec![Scope::Read, Scope::Write]);
        assert_eq!(request.customer_id, None);
        assert_eq!(request.ttl, Duration::from_secs(3600));
    }

    #[test]
    fn repeated_and_comma_separated_scopes_and_other_flags() {
        let customer = Uuid::new_v4().to_string();
        let request = parse(&[
            "--scope",
            "admin",
            "--scope=read, write",
            "--customer",
            &customer,
            "--subject",
            "alice",
            "--ttl-secs=60",
        ])
        .expect("parses")
        .expect("not help");
        assert_eq!(
            request.scopes,
            vec![Scope::Admin, Scope::Read, Scope::Write]
        );
        assert_eq!(request.customer_id.map(|c| c.to_string()), Some(customer));
        assert_eq!(request.subject, "alice");
        assert_eq!(request.ttl, Duration::from_secs(60));
    }

    #[test]
    fn rejects_bad_input() {
        for args in [
            &["--scope", "owner"][..],
            &["--customer", "42"],
            &["--ttl-secs", "-1"],
            &["--subject"],
            &["--verbose", "x"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
        assert!(parse(&["--help"]).expect("parses").is_none());
    }
}
