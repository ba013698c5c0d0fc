//! `weftctl config get|set`: the network config at `<prefix>/config`, secrets hidden unless
//! asked for. A config is validated, and judged key by key as running hosts will judge it
//! (weft::live), before it is stored with the record weftd follows.

use std::io::Read;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::Value;
use weft::config::NetworkConfig;
use weft::live::{self, Hosts, RunningConfig};
use weft::store::{ConfigKeys, EtcdStore, StoreError};

use super::Format;

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print the config as stored (`-o json`: with every default filled in). Secret settings
    /// (the WireGuard PSK) are shown as "(hidden)".
    Get {
        /// Show secret settings as they are.
        #[arg(long)]
        show_secrets: bool,
    },
    /// Validate a config, show what running hosts will do with each changed key, and store
    /// it unless a key is refused.
    Set {
        /// A file with the config JSON, or `-` for standard input.
        file: String,
        /// Store it even though a change disturbs traffic.
        #[arg(long)]
        yes: bool,
        /// Only show what running hosts would do; store nothing.
        #[arg(long)]
        dry_run: bool,
        /// With a new Backend.Type: only these hosts move for now (IPv4 subnets,
        /// comma-separated; `weftctl migrate` tells more); default every host.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<ipnet::Ipv4Net>,
    },
}

pub async fn run(store: &EtcdStore, out: Format, cmd: ConfigCmd) -> Result<()> {
    match cmd {
        ConfigCmd::Get { show_secrets } => get(store, out, show_secrets).await,
        ConfigCmd::Set {
            file,
            yes,
            dry_run,
            hosts,
        } => {
            let hosts = match hosts.is_empty() {
                true => Hosts::All,
                false => Hosts::Some(hosts.iter().map(|n| n.trunc()).collect()),
            };
            set(
                store,
                &file,
                Flags {
                    yes,
                    dry_run,
                    hosts,
                },
            )
            .await
        }
    }
}

async fn get(store: &EtcdStore, out: Format, show_secrets: bool) -> Result<()> {
    let key = store.config_key();
    let text = store
        .get_config_text()
        .await?
        .ok_or(StoreError::NoConfig { key: key.clone() })?;
    let parsed = NetworkConfig::parse(&text);
    match out {
        Format::Table => {
            say_config(&text, show_secrets)?;
            if let Err(problems) = parsed {
                let e = StoreError::Config { key, problems };
                esay!("weftctl: warning: the config is not valid: {e}");
            }
        }
        Format::Json => {
            let cfg = parsed.map_err(|problems| StoreError::Config { key, problems })?;
            let mut doc = cfg.effective_json();
            if !show_secrets {
                weft::config::hide_secrets(&mut doc);
            }
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    Ok(())
}

/// The stored config as it is, unless it holds a secret: then as JSON with the secret hidden
/// (a text that is not JSON cannot be searched for one, so it is shown only when asked).
fn say_config(text: &str, show_secrets: bool) -> Result<()> {
    if show_secrets {
        println!("{}", weft::show::escape_lines(text.trim_end()));
        return Ok(());
    }
    let Ok(mut doc) = serde_json::from_str::<Value>(text) else {
        bail!("the stored config is not valid JSON, so a secret in it cannot be hidden; --show-secrets prints it as stored");
    };
    let hidden = weft::config::hide_secrets(&mut doc);
    if hidden.is_empty() {
        println!("{}", weft::show::escape_lines(text.trim_end()));
    } else {
        let pretty = serde_json::to_string_pretty(&doc)?;
        println!("{}", weft::show::escape_lines(&pretty));
        esay!(
            "weftctl: {} hidden; --show-secrets shows it",
            hidden.join(", ")
        );
    }
    Ok(())
}

/// The config text in `file` (`-`: standard input).
fn read_input(file: &str) -> Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the config from standard input")?;
        return Ok(s);
    }
    Ok(weft::file::read_text(
        std::path::Path::new(file),
        weft::file::limit::LARGE,
    )?)
}

/// The record running hosts follow (with its mod revision), or, where none is yet, one made
/// of the stored document (hosts write it at their next start).
fn running_record(store: &EtcdStore, keys: &ConfigKeys) -> Result<Option<(RunningConfig, i64)>> {
    if let Some((bytes, rev)) = &keys.running {
        return Ok(Some((
            RunningConfig::parse(&store.running_key(), bytes)?,
            *rev,
        )));
    }
    let doc = keys.config.as_ref().and_then(|(text, rev)| {
        let cfg = NetworkConfig::parse(text).ok()?;
        Some((RunningConfig::new(cfg.raw, Some(*rev)), *rev))
    });
    Ok(doc)
}

/// Validates the config, judges it against the running one and the leases, prints the
/// verdict of each changed key, and stores it with its record (both guarded by what was
/// read) unless a key is refused, or disturbs traffic without `--yes`.
/// How `config set` goes about it.
struct Flags {
    yes: bool,
    dry_run: bool,
    /// The hosts a new Backend.Type moves.
    hosts: Hosts,
}

async fn set(store: &EtcdStore, file: &str, flags: Flags) -> Result<()> {
    let Flags {
        yes,
        dry_run,
        hosts,
    } = flags;
    let text = read_input(file)?;
    let key = store.config_key();
    let new = NetworkConfig::parse(&text).map_err(|problems| StoreError::Config {
        key: key.clone(),
        problems,
    })?;
    let keys = store.config_keys().await?;
    let current = running_record(store, &keys)?;
    let record = match &current {
        Some((rec, rec_rev)) => {
            let old = rec.network().map_err(|problems| StoreError::Config {
                key: store.running_key(),
                problems,
            })?;
            let leases = store.list_leases_untimed(None).await?.leases;
            let j = live::judge(rec, *rec_rev, &old, &new, None, &leases, hosts);
            say_changes(&j, &keys);
            if !j.refusals().is_empty() {
                bail!("refused while the network runs; nothing written to {key}");
            }
            if j.disturbs() && !yes && !dry_run {
                bail!("this change disturbs traffic (see above); nothing written: run again with --yes to store it");
            }
            j.accepted.expect("a change without refusals is accepted")
        }
        None => RunningConfig::new(new.raw.clone(), None),
    };
    if dry_run {
        say!("dry run: nothing written");
        return Ok(());
    }
    let config_guard = keys.config.as_ref().map(|(_, r)| *r);
    let running_guard = keys.running.as_ref().map(|(_, r)| *r);
    if !(store.put_config_with_running(&text, config_guard, &record.to_json(), running_guard))
        .await?
    {
        bail!("{key} changed while this ran; nothing written: run again to judge the change against it");
    }
    say!("config written to {key}");
    Ok(())
}

/// A line per changed key: old and new value (secrets hidden), and what running hosts do.
fn say_changes(j: &live::Judgement, keys: &ConfigKeys) {
    if let Some((_, rev)) = &keys.config {
        say!("changes against the config running hosts follow (<prefix>/config at revision {rev} or earlier):");
    }
    if j.changes.is_empty() {
        say!("  no key changes");
    }
    for c in &j.changes {
        say!("  {}: {} → {}: {}", c.key, c.old, c.new, c.verdict);
    }
}
