//! What names an attachment (container id + interface name), checked the same way by
//! the CNI plugin (from the runtime) and the agent (from any API client).

/// The spec's rules for `CNI_IFNAME` (and the kernel's): at most 15 bytes, not `.` or
/// `..`, no `/`, `:` or whitespace; and no leading `-` or `#`, which tools would read as
/// an option or a comment.
///
/// # Errors
/// Why the name is refused.
pub fn check_ifname(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1 to 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("must not be . or ..");
    }
    if name.contains(['/', ':']) || name.contains(char::is_whitespace) || name.contains(char::is_control) {
        return Err("must not contain /, :, whitespace or control characters");
    }
    if name.starts_with(['-', '#']) {
        return Err("must not start with - or #");
    }
    Ok(())
}

/// The spec's charset for container ids: a letter or digit, then `[A-Za-z0-9_.-]`.
#[must_use]
pub fn valid_container_id(id: &str) -> bool {
    id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}
