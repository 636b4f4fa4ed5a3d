//! AMQP URIs, parsed as lapin reads them, with IPv6 hosts kept.

/// `uri` (`amqp://` or `amqps://`) parsed for lapin.
///
/// lapin's parser (amq-protocol-uri) reads the host with `url::Url::domain`, which is `None`
/// for an IPv6 address, and falls back to `localhost`: `amqp://[::1]/` would connect to
/// `localhost`, `amqp://[2001:db8::1]/` too. The host in brackets is put back here, unbracketed
/// as lapin resolves it (`("::1", port)`).
pub(crate) fn parse_amqp_uri(uri: &str) -> Result<lapin::uri::AMQPUri, String> {
    let mut parsed: lapin::uri::AMQPUri = uri.parse()?;
    let authority = uri
        .split_once("://")
        .map_or(uri, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    // The user information ends at the last `@` (an `@` of its own is escaped).
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if let Some(bracketed) = host.strip_prefix('[') {
        let address = bracketed
            .split_once(']')
            .and_then(|(address, _)| address.parse::<std::net::Ipv6Addr>().ok())
            .ok_or_else(|| format!("`{host}` is not an IPv6 address in brackets"))?;
        parsed.authority.host = address.to_string();
    }
    Ok(parsed)
}

/// The user name in an AMQP URI (for the test tools, which grant it permissions).
pub(crate) fn amqp_user(uri: &str) -> Result<String, String> {
    Ok(parse_amqp_uri(uri)?.authority.userinfo.username)
}
