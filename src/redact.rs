//! One way to hide secrets in URLs and keys, used by API views, logs, webhooks and the masked
//! URL stored next to a sealed destination.

/// The URL for display and logs: user info and query values replaced by `***`. A URL that
/// does not parse is shown as `***`.
pub fn mask_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return "***".into();
    };
    let had_userinfo = !url.username().is_empty() || url.password().is_some();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let masked_query = url.query().map(|q| {
        q.split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None => "***".into(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    url.set_query(None);
    let mut text = url.to_string();
    if had_userinfo {
        if let Some(pos) = text.find("://") {
            text.insert_str(pos + 3, "***@");
        }
    }
    if let Some(q) = masked_query {
        text.push('?');
        text.push_str(&q);
    }
    text
}

/// A key for display: `****` and, for keys of 12+ characters, the last four.
pub fn key_hint(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() >= 12 {
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("****{tail}")
    } else if chars.is_empty() {
        String::new()
    } else {
        "****".into()
    }
}

/// A destination for display: [`mask_url`], and when no separate key was given (the stream
/// name, which is the key, is the URL's last path segment) that segment as `***` too.
pub fn mask_destination(raw: &str, key: &str) -> String {
    let masked = mask_url(raw);
    if !key.is_empty() || masked == "***" {
        return masked;
    }
    let (head, query) = match masked.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (masked.as_str(), None),
    };
    // Only a path segment after the application (scheme://host/app/name) is the key.
    let after_scheme = head.find("://").map_or(0, |i| i + 3);
    let path_start = head[after_scheme..]
        .find('/')
        .map_or(head.len(), |i| after_scheme + i);
    let path = head[path_start..].trim_end_matches('/');
    let mut out = match path.rsplit_once('/') {
        Some((app, name)) if !app.is_empty() && !name.is_empty() => {
            format!("{}{app}/***", &head[..path_start])
        }
        _ => head.to_owned(),
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_hide_user_info_query_values_and_a_key_in_the_path() {
        assert_eq!(
            mask_destination("rtmp://u:pw@h.example/live/sk_9f8e7d6c5b4a?token=abc&x", ""),
            "rtmp://***@h.example/live/***?token=***&***"
        );
        assert_eq!(
            mask_destination("rtmps://h.example:443/app/inst/secretname", ""),
            "rtmps://h.example:443/app/inst/***"
        );
        // With a separate key the path is the application only: kept.
        assert_eq!(
            mask_destination("rtmp://h.example/live/app2", "k"),
            "rtmp://h.example/live/app2"
        );
        // No stream name in the path: nothing to hide.
        assert_eq!(
            mask_destination("rtmp://h.example/live", ""),
            "rtmp://h.example/live"
        );
        assert_eq!(mask_destination("not a url", ""), "***");
        assert_eq!(
            mask_url("https://user:pass@hooks.example/in?sig=1"),
            "https://***@hooks.example/in?sig=***"
        );
        assert_eq!(key_hint("abcdefghijkl1234"), "****1234");
        assert_eq!(key_hint("short"), "****");
    }
}
