//! `weft`, the CNI plugin of the weft overlay: one short-lived process per runtime call that
//! reads the CNI_* variables and the network config, does the whole job (bridge, veth, IPAM
//! in host-local's layout) and prints the result or the spec's error JSON on stdout.

// No function over 80 lines (clippy.toml); CI runs clippy with -D warnings.
#![warn(clippy::too_many_lines)]

mod cmd;
mod config;
mod env;
mod error;
mod ipam;
mod link;
mod policy;
#[cfg(test)]
mod props;
mod result;
mod state;
mod version;

use std::io::{Read, Write as _};

use serde_json::Value;

use crate::config::{asked_version, decode, NetConf};
use crate::env::{Attachment, Command};
use crate::error::{code, CniError};
use crate::version::Version;

/// The most a network config on stdin may take: runtimes send a few kilobytes (a conflist
/// entry with its prevResult), so this only stops a runaway writer.
const STDIN_LIMIT: u64 = 4 << 20;

fn main() {
    let lookup = |key: &str| std::env::var(key).ok();
    let read = read_stdin(std::io::stdin().lock(), STDIN_LIMIT);
    let (output, status) = match dispatch(&lookup, read) {
        Ok(Some(value)) => (Some(value), 0),
        Ok(None) => (None, 0),
        Err((err, version)) => (Some(err.to_json(version.as_str())), 1),
    };
    if let Some(value) = output {
        let mut out = std::io::stdout().lock();
        // Nobody is left to tell when stdout itself fails; the exit status still does.
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }
    std::process::exit(status);
}

/// At most `limit` bytes of `input`; more is an error, never memory without end.
fn read_stdin(input: impl Read, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    input.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "more than {limit} bytes, which no network config is"
        )));
    }
    Ok(bytes)
}

/// Runs one command; an error carries the version to write it in (the asked one when weft
/// speaks it).
fn dispatch(
    lookup: &impl Fn(&str) -> Option<String>,
    stdin: std::io::Result<Vec<u8>>,
) -> Result<Option<Value>, (CniError, Version)> {
    let latest = |e: CniError| (e, Version::LATEST);
    let command = Command::from_env(lookup).map_err(latest)?;
    let stdin = stdin
        .map_err(|e| {
            CniError::new(
                code::IO,
                format!("cannot read the network config from stdin: {e}"),
            )
        })
        .map_err(latest)?;
    if command == Command::Version {
        return cmd::version::run(&stdin).map(Some).map_err(latest);
    }
    let obj = decode(&stdin).map_err(latest)?;
    let version = Version::require(asked_version(&obj)).map_err(latest)?;
    let in_version = |e: CniError| (e, version);
    version.allows(command.name()).map_err(in_version)?;
    let attachment = match command {
        Command::Add | Command::Del | Command::Check => {
            Some(Attachment::from_env(command, lookup).map_err(in_version)?)
        }
        _ => None,
    };
    let conf = NetConf::parse(&obj).map_err(in_version)?;
    let result = match (&attachment, command) {
        (Some(att), Command::Add) => cmd::add::run(&conf, att).map(|r| Some(r.write(version))),
        (Some(att), Command::Del) => cmd::del::run(&conf, att).map(|()| None),
        (Some(att), _) => cmd::check::run(&conf, att).map(|()| None),
        (None, Command::Gc) => cmd::gc::run(&conf).map(|()| None),
        // STATUS: VERSION returned above, and only ADD, DEL and CHECK carry an attachment.
        (None, _) => cmd::status::run(&conf).map(|()| None),
    };
    result.map_err(in_version)
}
