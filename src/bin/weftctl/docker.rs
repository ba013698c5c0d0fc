//! `weftctl docker-opts`: dockerd's settings for this host's subnet, from subnet.env, with the
//! flags of flannel's mk-docker-opts.sh; needs no etcd.

use anyhow::Result;
use weft::docker::{self, DockerOptsFormat};
use weft::subnet_env::{write_atomically, SubnetEnv};

/// flannel's mk-docker-opts.sh flags, under the same letters.
#[derive(clap::Args, Debug)]
pub struct DockerOptsArgs {
    /// The subnet file weftd writes.
    #[arg(
        short = 'f',
        long,
        env = "WEFTD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    subnet_file: std::path::PathBuf,
    /// Write the variables to this file (atomically) instead of printing them, e.g.
    /// /run/docker_opts.env.
    #[arg(short = 'd', long)]
    dest: Option<std::path::PathBuf>,
    /// One variable per option: DOCKER_OPT_BIP, DOCKER_OPT_IPMASQ, DOCKER_OPT_MTU.
    #[arg(short = 'i', long)]
    individual: bool,
    /// All options in one variable (see --key). Without -i or -c, both are written.
    #[arg(short = 'c', long)]
    combined: bool,
    /// Name of the combined variable.
    #[arg(short = 'k', long, default_value = "DOCKER_OPTS")]
    key: String,
    /// Leave --ip-masq out (for dockerd versions without it).
    #[arg(short = 'm', long)]
    without_ip_masq: bool,
}

pub fn run(args: &DockerOptsArgs) -> Result<()> {
    let env = SubnetEnv::read(&args.subnet_file)?;
    let format = DockerOptsFormat {
        individual: args.individual,
        combined: args.combined,
        key: args.key.clone(),
        without_ip_masq: args.without_ip_masq,
    };
    let text = docker::render(&env, &args.subnet_file.to_string_lossy(), &format)?;
    match &args.dest {
        Some(dest) => write_atomically(dest, &text)?,
        None => print!("{text}"),
    }
    Ok(())
}
