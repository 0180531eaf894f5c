//! Small pieces several command families share: argument text for error
//! messages, integer arguments, and the `HELP` subcommand replies.

use crate::session::Session;

/// Text of a user-supplied argument for an error message, cut like `%.128s`.
pub(super) fn truncate(arg: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&arg[..arg.len().min(max)]).into_owned()
}

/// Shared by the `HELP` subcommands: one status line per entry.
pub(super) fn reply_help(s: &mut Session, command: &str, lines: &[&str]) -> bool {
    let mut r = s.reply();
    r.array(lines.len() + 3);
    r.simple(&format!(
        "{command} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"
    ));
    for line in lines {
        r.simple(line);
    }
    r.simple("HELP");
    r.simple("    Print this help.");
    true
}

/// An argument parsed as an integer, or Redis's error reply.
pub(super) fn int_arg(s: &mut Session, arg: &[u8]) -> Option<i64> {
    let v = crate::codec::parse_i64(arg);
    if v.is_none() {
        s.reply()
            .error("ERR value is not an integer or out of range");
    }
    v
}
