//! Rewrites of the raw command line before clap sees it, so it reads as docker's does:
//! - `rbuild [GLOBAL FLAGS] ARGS...` where the first argument after the global flags is neither a
//!   subcommand nor a flag of the top level (`rbuild -t x .`, `rbuild .`) means `rbuild build ...`;
//!   global flags stay global (`rbuild --root /s images` lists the images of `/s`).
//! - `rbuild run|create [FLAGS] IMAGE ARGS...`: everything after IMAGE is the container's command, flags
//!   included (`rbuild run img id -u` runs `id -u`), as `docker run`.
//!
//! Which flags take a value is read from clap's own definition of the commands, so a new flag
//! needs no change here.

use clap::Command;

/// The arguments `cmd` accepts: its own and the top level's global ones (clap propagates those
/// only when it builds the command, so a subcommand's list lacks them here).
fn arguments<'a>(top: &'a Command, cmd: &'a Command) -> impl Iterator<Item = &'a clap::Arg> {
    cmd.get_arguments()
        .chain(top.get_arguments().filter(|a| a.is_global_set()))
}

/// Whether `arg` of `cmd` (`--long`, `--long=v`, `-s`, `-sVALUE`, `-abc`) consumes the next word
/// as its value. Unknown flags are taken as switches.
fn takes_next(top: &Command, cmd: &Command, arg: &str) -> bool {
    if let Some(long) = arg.strip_prefix("--") {
        if long.contains('=') {
            return false;
        }
        return arguments(top, cmd)
            .find(|a| a.get_long() == Some(long))
            .is_some_and(|a| a.get_action().takes_values());
    }
    // A cluster of shorts: the first one that takes a value takes the rest of the word, or the
    // next word when it is last.
    let shorts: Vec<char> = arg.chars().skip(1).collect();
    for (i, c) in shorts.iter().enumerate() {
        let takes = arguments(top, cmd)
            .find(|a| a.get_short() == Some(*c))
            .is_some_and(|a| a.get_action().takes_values());
        if takes {
            return i + 1 == shorts.len();
        }
    }
    false
}

/// Index in `args` of the first word that is not a flag of `cmd` nor a flag's value, and whether
/// a `--` came before it (then it is taken as is).
fn first_positional(top: &Command, cmd: &Command, args: &[String]) -> Option<(usize, bool)> {
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            return (i + 1 < args.len()).then_some((i + 1, true));
        }
        if a.len() > 1 && a.starts_with('-') {
            i += if takes_next(top, cmd, a) { 2 } else { 1 };
            continue;
        }
        return Some((i, false));
    }
    None
}

/// The command line clap should parse, given the process's `argv` and the top-level command.
pub(crate) fn rewrite(top: &Command, mut argv: Vec<String>) -> Vec<String> {
    if argv.len() < 2 {
        return argv;
    }
    let sub = global_flags_end(top, &argv);
    let Some(word) = argv.get(sub) else {
        return argv;
    };
    let is_sub = word == "help" || top.find_subcommand(word).is_some();
    let is_info = matches!(word.as_str(), "-h" | "--help" | "-V" | "--version");
    if !is_sub {
        // Not a subcommand: `build` (after the global flags, so they keep applying), unless
        // the user asked for rbuild's help or version.
        if !is_info {
            argv.insert(sub, "build".into());
        }
        return argv;
    }
    if argv[sub] == "run" || argv[sub] == "create" {
        if let Some(run) = top.find_subcommand(&argv[sub]) {
            if let Some((img, false)) = first_positional(top, run, &argv[sub + 1..]) {
                argv.insert(sub + 2 + img, "--".into());
            }
        }
    }
    argv
}

/// Whether `w` starts a top-level flag (`--root`, `--root=x`).
fn is_global_flag_word(top: &Command, w: &str) -> bool {
    let Some(long) = w.strip_prefix("--") else {
        return false;
    };
    let name = long.split('=').next().unwrap_or_default();
    top.get_arguments()
        .any(|a| a.get_long() == Some(name) && a.get_id() != "help" && a.get_id() != "version")
}

/// The index after the leading global flags (and their values) of `argv`.
fn global_flags_end(top: &Command, argv: &[String]) -> usize {
    let mut i = 1;
    while i < argv.len() {
        if !is_global_flag_word(top, &argv[i]) {
            break;
        }
        i += if takes_next(top, top, &argv[i]) { 2 } else { 1 };
    }
    i.min(argv.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn rw(line: &str) -> String {
        let argv: Vec<String> = line.split(' ').map(str::to_string).collect();
        rewrite(&crate::Cli::command(), argv).join(" ")
    }

    #[test]
    fn global_flags_before_a_subcommand_stay_global() {
        assert_eq!(rw("rbuild --root /s images"), "rbuild --root /s images");
        assert_eq!(rw("rbuild --root=/s images"), "rbuild --root=/s images");
        assert_eq!(rw("rbuild images"), "rbuild images");
    }

    #[test]
    fn a_first_word_that_is_no_subcommand_means_build() {
        assert_eq!(rw("rbuild -t x ."), "rbuild build -t x .");
        assert_eq!(rw("rbuild ."), "rbuild build .");
        assert_eq!(
            rw("rbuild --root /s -t x ."),
            "rbuild --root /s build -t x ."
        );
        assert_eq!(rw("rbuild --root /s ."), "rbuild --root /s build .");
        // A context directory named like a subcommand needs `build` spelled out, as with docker.
        assert_eq!(rw("rbuild build images"), "rbuild build images");
        assert_eq!(rw("rbuild --help"), "rbuild --help");
        assert_eq!(rw("rbuild -V"), "rbuild -V");
        assert_eq!(rw("rbuild help run"), "rbuild help run");
        assert_eq!(rw("rbuild -t images ."), "rbuild build -t images .");
        assert_eq!(rw("rbuild --root /s --help"), "rbuild --root /s --help");
        assert_eq!(rw("rbuild"), "rbuild");
    }

    #[test]
    fn everything_after_the_image_is_the_command() {
        assert_eq!(rw("rbuild run img id -u"), "rbuild run img -- id -u");
        assert_eq!(rw("rbuild create img id -u"), "rbuild create img -- id -u");
        assert_eq!(
            rw("rbuild run --rm -u 1 img -u"),
            "rbuild run --rm -u 1 img -- -u"
        );
        assert_eq!(
            rw("rbuild run -e A=1 -it img sh"),
            "rbuild run -e A=1 -it img -- sh"
        );
        assert_eq!(rw("rbuild run -eA=1 img sh"), "rbuild run -eA=1 img -- sh");
        assert_eq!(
            rw("rbuild run --pids-limit -1 img"),
            "rbuild run --pids-limit -1 img --"
        );
        assert_eq!(
            rw("rbuild --root /s run img --help"),
            "rbuild --root /s run img -- --help"
        );
        // `--` before the image ends rbuild's flags; after it, it is the command's (as docker).
        assert_eq!(rw("rbuild run -- img -u"), "rbuild run -- img -u");
        assert_eq!(rw("rbuild run img -- a"), "rbuild run img -- -- a");
        assert_eq!(rw("rbuild run --help"), "rbuild run --help");
        // A global flag after the subcommand takes its value there too.
        assert_eq!(
            rw("rbuild run --root /s --rm img -u"),
            "rbuild run --root /s --rm img -- -u"
        );
    }

    #[test]
    fn rewritten_lines_parse() {
        use clap::Parser;
        for line in [
            "rbuild --root /s images",
            "rbuild run img id -u",
            "rbuild run img",
            "rbuild -t x .",
            "rbuild run img echo -- a",
        ] {
            let argv: Vec<String> = line.split(' ').map(str::to_string).collect();
            let argv = rewrite(&crate::Cli::command(), argv);
            crate::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }
}
