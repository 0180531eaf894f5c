//! JSON Web Tokens end to end: a real limpet-node with `[auth]` refuses
//! bad tokens at the handshake with 401 (counted by reason), keeps a
//! socket to its token's rooms, closes it with 4004 when the token
//! expires, and lets `refresh` extend it.

mod common;
use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-of-at-least-32-bytes!!";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mint(claims: Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn auth_config() -> String {
    format!("[auth]\nrequired = true\nhmac_secret = \"{SECRET}\"\nleeway = \"0s\"\n")
}

async fn error_code(c: &mut Client, req: Value) -> String {
    let reply = c.request(req).await;
    assert_eq!(reply["type"], "error", "{reply}");
    reply["code"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_at_the_handshake() {
    let broker = Broker::start(Kind::Limpet).await;
    let node = NodeProcess::start("auth-a", &broker, &auth_config());
    node.wait_ready().await;

    assert_eq!(
        Client::connect_with(&node, &[]).await.err(),
        Some(401),
        "no token"
    );
    let forged = mint(
        json!({"sub": "ann", "exp": now() + 60}),
        "another-secret-also-32-bytes-long!",
    );
    assert_eq!(Client::connect_token(&node, &forged).await.err(), Some(401));
    let expired = mint(json!({"sub": "ann", "exp": now() - 60}), SECRET);
    assert_eq!(
        Client::connect_token(&node, &expired).await.err(),
        Some(401)
    );
    // {"alg":"none"} with no signature.
    let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbm4iLCJleHAiOjk5OTk5OTk5OTl9.";
    assert_eq!(Client::connect_token(&node, none).await.err(), Some(401));
    assert_eq!(
        Client::connect_token(&node, "not-a-jwt").await.err(),
        Some(401)
    );
    let huge = "a".repeat(9000);
    assert_eq!(Client::connect_token(&node, &huge).await.err(), Some(431));
    // The reason is in the body.
    let (status, body) = http(node.addr, "GET", &format!("/ws?token={none}"), &UPGRADE, "").await;
    assert_eq!(status, 401);
    assert!(body.contains("alg: none"), "{body}");

    for reason in [
        "missing",
        "forged",
        "expired",
        "alg_none",
        "malformed",
        "too_long",
    ] {
        let name = format!("limpet_node_auth_failures_total{{reason=\"{reason}\"}}");
        assert!(node.metric(&name).await >= 1.0, "{name}");
    }

    let good = mint(json!({"sub": "ann", "exp": now() + 60}), SECRET);
    let c = Client::connect_token(&node, &good)
        .await
        .expect("a valid token connects");
    assert!(c.socket.starts_with("auth-a."));
    // The log is read from the node's stderr by another thread: it may
    // lag the welcome frame by a moment.
    limpet_testkit::eventually("the connection log names the user", || async {
        node.log_text().contains("user=ann")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_limits_rooms_and_publishing() {
    let broker = Broker::start(Kind::Limpet).await;
    let (node, other) = two_nodes(&broker, ["auth-b", "auth-b2"], &auth_config()).await;
    let token = mint(
        json!({"sub": "ann", "exp": now() + 60, "rooms": ["team-*", "lobby"], "publish": ["team-*"]}),
        SECRET,
    );
    let mut ann = Client::connect_token(&node, &token).await.unwrap();
    let bob_token = mint(json!({"sub": "bob", "exp": now() + 60}), SECRET);
    // Bob is on another node: users cross nodes in frames and presence.
    let mut bob = Client::connect_token(&other, &bob_token).await.unwrap();

    assert_eq!(
        error_code(&mut ann, json!({"op": "join", "room": "secret"})).await,
        "forbidden"
    );
    // A recovery request for a room outside the token is refused the same way.
    assert_eq!(
        error_code(
            &mut ann,
            json!({"op": "join", "room": "secret", "since": {"offset": 0, "epoch": "x"}})
        )
        .await,
        "forbidden"
    );
    bob.join("team-red").await;
    ann.join("team-red").await; // allowed by the pattern
    let joined = bob.about("joined", &ann.socket).await;
    assert_eq!(joined["user"], "ann", "{joined}");
    ann.join("lobby").await;
    assert_eq!(
        error_code(
            &mut ann,
            json!({"op": "emit", "room": "lobby", "event": "e"})
        )
        .await,
        "forbidden"
    );
    ann.emit("team-red", "hi", json!(1)).await;
    let e = bob.event_named("hi").await;
    assert_eq!(e["user"], "ann", "{e}");
    assert_eq!(e["from"], json!(ann.socket), "existing fields stay");
    let p = ann.ok(json!({"op": "presence", "room": "team-red"})).await;
    let mut users: Vec<(String, String)> = p["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user"].as_str().unwrap().to_string(),
                m["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    users.sort();
    assert_eq!(
        users,
        [
            ("ann".to_string(), "auth-b".to_string()),
            ("bob".to_string(), "auth-b2".to_string())
        ],
        "{p}"
    );
    // Still connected and working.
    ann.ok(json!({"op": "ping"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_with_4004_and_refresh_extends_it() {
    let broker = Broker::start(Kind::Limpet).await;
    let node = NodeProcess::start("auth-c", &broker, &auth_config());
    node.wait_ready().await;
    let short = |user: &str| mint(json!({"sub": user, "exp": now() + 2}), SECRET);
    let mut lapsing = Client::connect_token(&node, &short("ann")).await.unwrap();
    let mut refreshed = Client::connect_token(&node, &short("bob")).await.unwrap();

    // A refresh must verify and name the same user.
    let forged = mint(
        json!({"sub": "bob", "exp": now() + 3600}),
        "another-secret-also-32-bytes-long!",
    );
    let reply = refreshed
        .request(json!({"op": "refresh", "token": forged}))
        .await;
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    let other = mint(json!({"sub": "eve", "exp": now() + 3600}), SECRET);
    let reply = refreshed
        .request(json!({"op": "refresh", "token": other}))
        .await;
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    let long = mint(json!({"sub": "bob", "exp": now() + 3600}), SECRET);
    let ack = refreshed.ok(json!({"op": "refresh", "token": long})).await;
    assert!(ack["exp"].as_u64().unwrap() > now() + 3000, "{ack}");

    // Waits for the server's close, however long the token had left.
    assert_eq!(lapsing.closed_with().await, 4004);
    // Both tokens had the same exp: the refreshed socket is still open.
    refreshed.ok(json!({"op": "ping"})).await;
    assert!(
        node.metric("limpet_node_closes_total{reason=\"token_expired\"}")
            .await
            >= 1.0
    );
}
