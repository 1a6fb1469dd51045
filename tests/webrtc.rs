//! WHIP and WHEP end to end, with peers built on the `webrtc` crate (its packetizer and
//! depacketizer, not ours): the committed H.264 + Opus fixtures published over WHIP become
//! LL-HLS that ffmpeg decodes; an RTMP stream plays over WHEP and what arrives decodes;
//! bad offers, keys and content types are refused without leaving a session behind.

mod common;

use std::time::Duration;

use rtc::peer_connection::configuration::RTCOfferOptions;

use common::webrtc::*;
use common::*;

async fn api_get(ts: &TestServer, path: &str) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .get(ts.http(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    resp.json().await.unwrap()
}

/// Polls the stream detail (up to `secs`) until `ready` holds; returns the last detail.
async fn detail_when(
    ts: &TestServer,
    id: &str,
    secs: u64,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut detail = serde_json::Value::Null;
    for _ in 0..secs * 10 {
        detail = api_get(ts, &format!("/api/v1/streams/{id}")).await;
        if ready(&detail) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    detail
}

fn has_two_tracks(d: &serde_json::Value) -> bool {
    d["live"]["tracks"].as_array().is_some_and(|t| t.len() == 2)
}

async fn wait_sessions(ts: &TestServer, n: usize) {
    for _ in 0..100 {
        if ts.server.webrtc.count() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "expected {n} WebRTC sessions, have {}",
        ts.server.webrtc.count()
    );
}

fn ffprobe_frames(path: &std::path::Path) -> (u64, String) {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let frames = text
        .rsplit(',')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (
        frames,
        format!("{text} {}", String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_fixture_becomes_hls_that_ffmpeg_decodes() {
    let ts = start_server("whip").await;
    let (id, key) = ts.create_stream("whip1").await;
    let url = ts.http("/whip/live/whip1");
    let publishing = whip_publish(&url, &key, 1).await;

    // While live: the API shows a WHIP stream with the fixture's resolution and Opus audio.
    let detail = detail_when(&ts, &id, 5, has_two_tracks).await;
    assert_eq!(detail["live"]["protocol"], "whip", "{detail}");
    let tracks = detail["live"]["tracks"].as_array().unwrap();
    assert_eq!(tracks[0]["codec"], "h264");
    assert_eq!(tracks[0]["width"], 320);
    assert_eq!(tracks[0]["height"], 240);
    assert_eq!(tracks[1]["codec"], "opus");
    assert_eq!(detail["live"]["webrtc_playback"]["audio"], true);

    let _ = publishing.sender.await;
    let transport =
        api_get(&ts, &format!("/api/v1/streams/{id}")).await["live"]["transport"].clone();
    assert!(
        transport["packets_received"].as_u64().unwrap() > 300,
        "{transport}"
    );
    assert_eq!(transport["packets_lost"], 0, "{transport}");

    // DELETE ends the session and the stream.
    let resp = reqwest::Client::new()
        .delete(ts.http(&publishing.location))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    wait_sessions(&ts, 0).await;
    let text = wait_for_endlist(&ts, &id, 20).await;
    parse_media_playlist(text.as_bytes());

    if require_program("ffmpeg") {
        // ffmpeg reads the HLS playlist and decodes every segment, video and Opus audio.
        let out = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(ts.http(&format!("/hls/{id}/index.m3u8")))
            .args(["-map", "0", "-f", "null", "-"])
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "ffmpeg: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = ts.dir.join("whip.mp4");
        let out = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(ts.http(&format!("/hls/{id}/index.m3u8")))
            .args(["-c", "copy", "-y"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (frames, text) = ffprobe_frames(&file);
        eprintln!("frames {frames}: {text}");
        // 4 s at 30 fps (1 s GOPs), less what came before the first keyframe reached us:
        // on a loaded machine the first GOP's packets can arrive before the server's SRTP
        // session is up, and a file replay cannot answer our PLI the way an encoder does.
        assert!(frames >= 90, "decoded {frames} frames: {text}");
        let audio = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-select_streams",
                "a:0",
                "-show_entries",
                "stream=codec_name",
                "-of",
                "csv=p=0",
            ])
            .arg(&file)
            .output()
            .unwrap();
        // WHIP's Opus is packaged as AAC for HLS players (`[transcode] hls_aac`).
        assert_eq!(String::from_utf8_lossy(&audio.stdout).trim(), "aac");
    }
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_plays_an_rtmp_stream_as_decodable_h264() {
    let ts = start_server("whep").await;
    let (id, key) = ts.create_stream("rtmp1").await;
    let tags = read_flv(FIXTURE);
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .expect("publish accepted");
    let pusher = tokio::spawn(async move {
        for _ in 0..3 {
            publisher.send_tags(&tags, true).await;
        }
        publisher.finish().await;
    });
    wait_for_200(&ts.http(&format!("/hls/{id}/index.m3u8")), 10).await;

    let (mut peer, location) = whep_play(&ts.http(&format!("/whep/{id}")), None).await;
    peer.connected(10).await;
    let detail = detail_when(&ts, &id, 3, |d| {
        d["live"]["duration_seconds"].as_f64().unwrap_or(0.0) > 1.0
    })
    .await;
    assert!(detail["viewer_count"].as_u64().unwrap() >= 1, "{detail}");
    assert_eq!(detail["live"]["webrtc_playback"]["video"], true);
    // The AAC is transcoded to Opus for WebRTC; the B-frames stay a caveat.
    assert_eq!(detail["live"]["webrtc_playback"]["audio"], true);
    assert_eq!(detail["live"]["webrtc_playback"]["audio_transcoded"], true);
    let note = detail["live"]["webrtc_playback"]["note"].as_str().unwrap();
    assert!(!note.contains("AAC") && note.contains("B-frames"), "{note}");
    let file = ts.dir.join("whep.h264");
    let packets = receive_video(&mut peer, &file, 4).await;
    eprintln!("packets {packets}");
    assert!(packets > 50, "{packets} RTP packets");
    if require_program("ffprobe") {
        let (frames, text) = ffprobe_frames(&file);
        eprintln!("frames {frames}: {text}");
        assert!(frames >= 60, "decoded {frames} frames: {text}");
        let out = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(&file)
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        assert!(
            out.stderr.is_empty(),
            "decode errors: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let resp = reqwest::Client::new()
        .delete(ts.http(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    wait_sessions(&ts, 0).await;
    let _ = peer.pc.close().await;
    pusher.abort();
    ts.server.shutdown().await;
}

async fn post_json_error(
    url: &str,
    bearer: Option<&str>,
    content_type: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body.to_owned());
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let json = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_offers_keys_and_requests_are_refused_without_a_session() {
    let ts = start_server("whip-bad").await;
    let (id, key) = ts.create_stream("bad1").await;
    let url = ts.http("/whip/live/bad1");
    // A real offer from a webrtc-crate peer, to mutate.
    let (peer, offer) = publisher_offer().await;

    let (status, err) = post_json_error(
        &url,
        Some(&key),
        "application/sdp",
        "v=0\r\nthis is not sdp",
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["code"], "invalid_sdp", "{err}");

    let (status, err) = post_json_error(&url, Some("wrong-key"), "application/sdp", &offer).await;
    assert_eq!(status, 401, "{err}");
    let (status, _) = post_json_error(&url, None, "application/sdp", &offer).await;
    assert_eq!(status, 401);
    // The right key for another stream name is refused too.
    let (status, _) = post_json_error(
        &ts.http("/whip/live/other"),
        Some(&key),
        "application/sdp",
        &offer,
    )
    .await;
    assert_eq!(status, 401);

    let vp8_only = offer.replace("H264/90000", "VP8/90000");
    let (status, err) = post_json_error(&url, Some(&key), "application/sdp", &vp8_only).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["code"], "unsupported_codec", "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("H.264"));

    let (status, err) = post_json_error(&url, Some(&key), "text/plain", &offer).await;
    assert_eq!(status, 415, "{err}");

    // WHEP: a stream that is not live, a private stream without a token, an unknown session.
    let (status, err) = post_json_error(
        &ts.http(&format!("/whep/{id}")),
        None,
        "application/sdp",
        &offer,
    )
    .await;
    assert_eq!(status, 404, "{err}");
    let (private_id, _) = ts.create_stream("private1").await;
    ts.server
        .store
        .update_stream(
            &private_id,
            media_server::store::StreamPatch {
                privacy: Some(media_server::store::Privacy::Private),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (status, err) = post_json_error(
        &ts.http(&format!("/whep/{private_id}")),
        None,
        "application/sdp",
        &offer,
    )
    .await;
    assert_eq!(status, 401, "{err}");
    let resp = reqwest::Client::new()
        .delete(ts.http("/whip/session/0123456789abcdef0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // OPTIONS advertises what POST takes.
    let resp = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["accept-post"], "application/sdp");

    // Nothing was left behind: no session, the stream never went live.
    assert_eq!(ts.server.webrtc.count(), 0);
    assert!(ts.server.hub.get(&id).is_none());
    let detail = api_get(&ts, &format!("/api/v1/streams/{id}")).await;
    assert_eq!(detail["state"], "idle", "{detail}");
    let _ = peer.pc.close().await;
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_session_trickle_and_second_publisher() {
    let ts = start_server("whip-trickle").await;
    let (id, key) = ts.create_stream("tr1").await;
    let url = ts.http("/whip/live/tr1");
    let publishing = whip_publish(&url, &key, 20).await;
    let session = ts.http(&publishing.location);
    let client = reqwest::Client::new();
    let server_session = ts.server.webrtc.list()[0].clone();
    let etag = server_session.etag();
    // Trickle candidates are accepted (204); a stale ETag fails the precondition (412).
    let frag = "a=ice-ufrag:ZZZZ\r\na=ice-pwd:x\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let remote = publishing.peer.pc.local_description().await.unwrap().sdp;
    let attr = |sdp: &str, name: &str| {
        sdp.lines()
            .find_map(|l| l.trim_end().strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {sdp}"))
            .to_owned()
    };
    let ufrag = attr(&remote, "a=ice-ufrag:");
    let patch = |body: String, tag: &str| {
        client
            .patch(&session)
            .bearer_auth(&key)
            .header("content-type", "application/trickle-ice-sdpfrag")
            .header("if-match", tag)
            .body(body)
    };
    let resp = patch(frag.replace("ZZZZ", &ufrag), &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let resp = patch(frag.replace("ZZZZ", &ufrag), "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 412);
    // A new ufrag without its password is not a restart anyone can carry out (422).
    let resp = patch("a=ice-ufrag:YYYY\r\n".to_owned(), "*")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);

    // ICE restart (RFC 9725 §4.3.2) by the client's own ICE agent: its new credentials go in
    // a PATCH with If-Match: *; the 200 carries ours (new) and a new ETag; the client's checks
    // with them succeed (the server's ICE comes up a second time) and media keeps coming.
    let connects = server_session.ice_connects();
    assert_eq!(connects, 1, "connected once before the restart");
    let restart = publishing
        .peer
        .pc
        .create_offer(Some(RTCOfferOptions { ice_restart: true }))
        .await
        .unwrap();
    publishing
        .peer
        .pc
        .set_local_description(restart)
        .await
        .unwrap();
    let offer = publishing.peer.pc.local_description().await.unwrap().sdp;
    let (new_ufrag, new_pwd) = (attr(&offer, "a=ice-ufrag:"), attr(&offer, "a=ice-pwd:"));
    assert_ne!(new_ufrag, ufrag, "the client restarts with new credentials");
    let resp = patch(
        format!(
            "a=ice-ufrag:{new_ufrag}\r\na=ice-pwd:{new_pwd}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n\
             a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
        ),
        "*",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/trickle-ice-sdpfrag"
    );
    let new_etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(
        new_etag, etag,
        "a restart makes a new ICE session: a new ETag"
    );
    let fragment = resp.text().await.unwrap();
    let answer = publishing.peer.pc.remote_description().await.unwrap().sdp;
    let (our_ufrag, our_pwd) = (
        attr(&fragment, "a=ice-ufrag:"),
        attr(&fragment, "a=ice-pwd:"),
    );
    assert_ne!(our_ufrag, attr(&answer, "a=ice-ufrag:"), "{fragment}");
    assert!(fragment.contains("a=ice-lite\r\n"), "{fragment}");
    assert!(fragment.contains("a=candidate:"), "{fragment}");
    let answer: String = answer
        .lines()
        .map(|l| {
            let l = l.trim_end();
            if l.starts_with("a=ice-ufrag:") {
                format!("a=ice-ufrag:{our_ufrag}\r\n")
            } else if l.starts_with("a=ice-pwd:") {
                format!("a=ice-pwd:{our_pwd}\r\n")
            } else {
                format!("{l}\r\n")
            }
        })
        .collect();
    publishing.peer.accept(answer).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server_session.ice_connects() <= connects {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted ICE did not connect with the new credentials"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The session goes on (media flowed on the old path meanwhile, and still comes).
    let before = api_get(&ts, &format!("/api/v1/streams/{id}")).await["live"]["bytes_in"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = api_get(&ts, &format!("/api/v1/streams/{id}")).await["live"]["bytes_in"]
        .as_u64()
        .unwrap();
    assert!(
        after > before + 10_000,
        "media after the restart: {before} -> {after}"
    );
    // The old ETag is stale now; the new one takes trickled candidates.
    let resp = patch(frag.replace("ZZZZ", &new_ufrag), &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 412);
    let resp = patch(frag.replace("ZZZZ", &new_ufrag), &new_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(ts.server.webrtc.endpoint().routed_sessions(), 1);

    // A second publisher on the same stream gets 409.
    let (second, offer) = publisher_offer().await;
    let (status, _, _) = post_sdp(&url, Some(&key), &offer).await;
    assert_eq!(status, 409);
    let resp = client.delete(&session).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = client
        .delete(&session)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    wait_sessions(&ts, 0).await;
    publishing.sender.abort();
    let _ = second.pc.close().await;
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_publishes_over_whip_and_the_hls_decodes() {
    let Some(python) = test_python() else {
        return;
    };
    let ts = start_server("aiortc").await;
    let (id, key) = ts.create_stream("py1").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/whip_aiortc.py");
    let child = tokio::process::Command::new(python)
        .arg(script)
        .arg(ts.http("/whip/live/py1"))
        .arg(&key)
        .arg("6")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // While it publishes: a WHIP stream at aiortc's resolution, with Opus audio.
    let detail = detail_when(&ts, &id, 10, has_two_tracks).await;
    assert_eq!(detail["live"]["protocol"], "whip", "{detail}");
    let tracks = detail["live"]["tracks"].as_array().unwrap();
    assert_eq!(tracks[0]["codec"], "h264", "{detail}");
    assert_eq!(tracks[0]["width"], 640, "{detail}");
    assert_eq!(tracks[0]["height"], 360, "{detail}");
    assert_eq!(tracks[1]["codec"], "opus", "{detail}");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("aiortc finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("state=connected") && stdout.contains("done"),
        "aiortc: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_sessions(&ts, 0).await;
    let text = wait_for_endlist(&ts, &id, 20).await;
    parse_media_playlist(text.as_bytes());
    if require_program("ffmpeg") {
        let file = ts.dir.join("aiortc.mp4");
        let out = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(ts.http(&format!("/hls/{id}/index.m3u8")))
            .args(["-map", "0", "-c", "copy", "-y"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let decode = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(&file)
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        assert!(
            decode.status.success() && decode.stderr.is_empty(),
            "decode: {}",
            String::from_utf8_lossy(&decode.stderr)
        );
        let (frames, text) = ffprobe_frames(&file);
        assert!(frames >= 60, "decoded {frames} frames: {text}");
        assert!(text.starts_with("640,360"), "{text}");
    }
    ts.server.shutdown().await;
}

/// Every candidate port of an answer, by transport.
fn candidate_ports(answer: &str) -> Vec<(String, u16)> {
    answer
        .lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .filter_map(|c| {
            let f: Vec<&str> = c.split(' ').collect();
            Some((f.get(2)?.to_lowercase(), f.get(5)?.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_udp_port_serves_5_whip_publishers_and_50_whep_viewers() {
    let ts = start_with("one-port", |c| {
        c.webrtc.public_ips = vec!["203.0.113.9".into()];
        c.webrtc.tcp_listen = "127.0.0.1:0".into();
        // 55 handshakes at once on a loaded 2-core machine.
        c.webrtc.connect_timeout_ms = 30_000;
    })
    .await;
    let udp = ts.server.webrtc.endpoint().udp_addr();
    let tcp = ts
        .server
        .webrtc
        .endpoint()
        .tcp_addr()
        .expect("ICE-TCP port");
    let mut publishers = Vec::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        let name = format!("p{i}");
        let (id, key) = ts.create_stream(&name).await;
        // Long enough to outlast the test on a slow machine (aborted at the end).
        publishers.push(whip_publish(&ts.http(&format!("/whip/live/{name}")), &key, 40).await);
        ids.push(id);
    }
    for id in &ids {
        detail_when(&ts, id, 10, has_two_tracks).await;
    }
    // Ten viewers per stream, all joining at once.
    let joins = (0..50).map(|i| {
        let url = ts.http(&format!("/whep/{}", ids[i % 5]));
        async move {
            let (peer, offer) = viewer_offer().await;
            let (status, _, answer) = post_sdp(&url, None, &offer).await;
            assert_eq!(status, 201, "{answer}");
            peer.accept(answer.clone()).await;
            (peer, answer)
        }
    });
    let viewers = futures_util::future::join_all(joins).await;
    wait_sessions(&ts, 55).await;
    assert_eq!(ts.server.webrtc.endpoint().routed_sessions(), 55);
    for (_, answer) in &viewers {
        let ports = candidate_ports(answer);
        assert!(ports.contains(&("udp".into(), udp.port())), "{answer}");
        assert!(ports.contains(&("tcp".into(), tcp.port())), "{answer}");
        assert!(
            ports
                .iter()
                .all(|(t, p)| (t == "udp" && *p == udp.port()) || (t == "tcp" && *p == tcp.port())),
            "a candidate off the shared ports: {ports:?}"
        );
        assert!(
            answer.contains(" 203.0.113.9 "),
            "public IP not announced: {answer}"
        );
        assert!(answer.contains("a=ice-lite"), "{answer}");
    }
    // Every viewer receives decodable H.264.
    let receives = viewers.into_iter().enumerate().map(|(i, (mut peer, _))| {
        let file = ts.dir.join(format!("viewer{i}.h264"));
        async move {
            peer.connected(15).await;
            let packets = receive_video(&mut peer, &file, 4).await;
            let _ = peer.pc.close().await;
            (file, packets)
        }
    });
    let received = futures_util::future::join_all(receives).await;
    require_program("ffprobe");
    for (file, packets) in &received {
        assert!(*packets > 20, "{}: {packets} RTP packets", file.display());
        let (frames, text) = ffprobe_frames(file);
        assert!(
            frames >= 15,
            "{}: decoded {frames} frames: {text}",
            file.display()
        );
    }
    // One server UDP socket on the port, whatever the number of sessions.
    let ss = std::process::Command::new("ss")
        .args(["-uan"])
        .output()
        .expect("ss");
    let ss = String::from_utf8_lossy(&ss.stdout);
    let on_port = ss
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(3)
                .is_some_and(|local| local.ends_with(&format!(":{}", udp.port())))
        })
        .count();
    assert_eq!(on_port, 1, "{ss}");
    wait_sessions(&ts, 5).await;
    assert_eq!(
        ts.server.webrtc.endpoint().routed_sessions(),
        5,
        "viewers' routes left behind"
    );
    for p in publishers {
        p.sender.abort();
        let _ = p.peer.pc.close().await;
    }
    wait_sessions(&ts, 0).await;
    assert_eq!(
        ts.server.webrtc.endpoint().routed_sessions(),
        0,
        "routes left behind"
    );
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_stream_plays_over_whep_with_a_play_token() {
    let ts = start_server("whep-private").await;
    let (id, key) = ts.create_stream("priv").await;
    ts.server
        .store
        .update_stream(
            &id,
            media_server::store::StreamPatch {
                privacy: Some(media_server::store::Privacy::Private),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let publishing = whip_publish(&ts.http("/whip/live/priv"), &key, 1).await;
    detail_when(&ts, &id, 5, has_two_tracks).await;
    let (peer, offer) = publisher_offer().await;
    let _ = peer.pc.close().await;
    let whep = ts.http(&format!("/whep/{id}"));
    let (status, _, body) = post_sdp(&format!("{whep}?token=1.bogus"), None, &offer).await;
    assert_eq!(status, 403, "{body}");
    let resp: serde_json::Value = reqwest::Client::new()
        .post(ts.http(&format!("/api/v1/streams/{id}/play-token")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "ttl_seconds": 300 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = resp["token"].as_str().unwrap().to_owned();
    // As ?token= and as a bearer token.
    let (mut viewer, _) = whep_play(&format!("{whep}?token={token}"), None).await;
    viewer.connected(10).await;
    let (mut viewer2, _) = whep_play(&whep, Some(&token)).await;
    viewer2.connected(10).await;
    let _ = viewer.pc.close().await;
    let _ = viewer2.pc.close().await;
    publishing.sender.abort();
    let _ = publishing.peer.pc.close().await;
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_connects_is_closed_and_its_stream_ends() {
    let ts = start_with("whip-timeout", |c| c.webrtc.connect_timeout_ms = 1000).await;
    let (id, key) = ts.create_stream("ghost").await;
    let (peer, offer) = publisher_offer().await;
    // The client posts its offer and then vanishes (never applies the answer).
    let (status, _, _) = post_sdp(&ts.http("/whip/live/ghost"), Some(&key), &offer).await;
    assert_eq!(status, 201);
    let _ = peer.pc.close().await;
    assert_eq!(ts.server.webrtc.count(), 1);
    assert!(ts.server.hub.get(&id).is_some(), "live while negotiating");
    wait_sessions(&ts, 0).await;
    for _ in 0..50 {
        if ts.server.hub.get(&id).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ts.server.hub.get(&id).is_none(), "the stream ended");
    ts.server.shutdown().await;
}

/// `webrtc.ice_servers`: at startup the server asks the STUN server (here a responder on
/// loopback that reports a documentation address, as a NAT would report the public one)
/// which address its UDP port has, and every answer announces that address too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stun_discovered_public_address_is_announced() {
    let stun = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let stun_addr = stun.local_addr().unwrap();
    let responder = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = stun.recv_from(&mut buf).await else {
                return;
            };
            // A binding request: answer with XOR-MAPPED-ADDRESS 198.51.100.77:{its port}.
            if n < 20 || buf[0..2] != [0, 1] {
                continue;
            }
            let cookie = [0x21u8, 0x12, 0xa4, 0x42];
            let port = from.port() ^ 0x2112;
            let ip = [198u8, 51, 100, 77];
            let mut resp = vec![0x01, 0x01, 0x00, 0x0c];
            resp.extend_from_slice(&cookie);
            resp.extend_from_slice(&buf[8..20]);
            resp.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01]);
            resp.extend_from_slice(&port.to_be_bytes());
            resp.extend(ip.iter().zip(cookie).map(|(a, k)| a ^ k));
            let _ = stun.send_to(&resp, from).await;
        }
    });
    let ts = start_with("stun-discovery", |c| {
        c.webrtc.ice_servers = vec![format!("stun:{stun_addr}")];
    })
    .await;
    let (_, key) = ts.create_stream("s1").await;
    let (peer, offer) = publisher_offer().await;
    let (status, _, answer) = post_sdp(&ts.http("/whip/live/s1"), Some(&key), &offer).await;
    assert_eq!(status, 201, "{answer}");
    let udp = ts.server.webrtc.endpoint().udp_addr();
    assert!(
        answer.contains(&format!(" 198.51.100.77 {} typ host", udp.port())),
        "the STUN-discovered address is not announced: {answer}"
    );
    let _ = peer.pc.close().await;
    responder.abort();
    ts.server.shutdown().await;
}
