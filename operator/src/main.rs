//! `chatpipe-operator`: the Kubernetes controller (the default subcommand)
//! and the CRD generator (`crdgen`). Local mode is `chatpipe-local`.

use clap::{Parser, Subcommand};

use chatpipe_operator::controller::ControllerArgs;

/// chatpipe operator: reconciles ChatPipeline resources.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// The controller's flags alone, for running without a subcommand (every
/// flag then comes from its environment variable or default).
#[derive(Debug, Parser)]
struct ControllerOnly {
    #[command(flatten)]
    args: ControllerArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reconcile ChatPipeline resources on a Kubernetes cluster (the default).
    Controller(ControllerArgs),
    /// Print the ChatPipeline CRD as YAML (what `crds/chatpipeline.yaml` holds).
    Crdgen,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = match cli.command {
        Some(c) => c,
        None => Command::Controller(ControllerOnly::try_parse_from(["chatpipe-operator"])?.args),
    };
    match command {
        Command::Controller(args) => chatpipe_operator::controller::run(args).await,
        Command::Crdgen => {
            print!("{}", chatpipe_operator::crd::crd_yaml()?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definitions_are_consistent() {
        Cli::command().debug_assert();
        ControllerOnly::command().debug_assert();
    }

    #[test]
    fn controller_is_the_default_and_takes_flags() {
        let cli = Cli::try_parse_from(["chatpipe-operator"]).unwrap();
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from([
            "chatpipe-operator",
            "controller",
            "--listen",
            "127.0.0.1:9000",
            "--kafka-admin-timeout",
            "3s",
        ])
        .unwrap();
        let Some(Command::Controller(args)) = cli.command else {
            panic!("controller subcommand expected");
        };
        assert_eq!(args.listen.port(), 9000);
        assert!(
            args.watch_namespaces.is_empty(),
            "every namespace by default"
        );
        let cli = Cli::try_parse_from([
            "chatpipe-operator",
            "controller",
            "--watch-namespaces",
            "team-a,team-b",
        ])
        .unwrap();
        let Some(Command::Controller(args)) = cli.command else {
            panic!("controller subcommand expected");
        };
        assert_eq!(args.watch_namespaces, ["team-a", "team-b"]);
    }
}
