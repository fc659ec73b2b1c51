//! JWT-SVIDs over the Workload API (SPIFFE.md 1.3, 1.7.9-1.7.11, §4, §6.5): minted tokens checked
//! by the `spiffe` crate's own verifier against the JWT bundles we serve, ValidateJWTSVID
//! accepting ours and entitled peers' and rejecting the wrong audience, expired, `alg: none` and
//! HS256 tokens, and SPIRE's argument errors.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::workload::*;
use meshtrust::workload_api::jwt;
use meshtrust::workload_api::proto::{JwtsvidRequest, ValidateJwtsvidRequest};
use prost_types::value::Kind;
use tonic::Code;

const FIRST: &str = "spiffe://mesh-a.test/workload/first";
const SECOND: &str = "spiffe://mesh-a.test/workload/second";

fn payload(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

async fn validate(
    mesh: &Mesh,
    audience: &str,
    svid: &str,
) -> Result<ValidateJwtsvidResponseLite, tonic::Status> {
    let mut client = mesh.raw_client().await;
    let request = with_header(ValidateJwtsvidRequest {
        audience: audience.to_owned(),
        svid: svid.to_owned(),
    });
    let response = guard(client.validate_jwtsvid(request)).await?.into_inner();
    Ok(ValidateJwtsvidResponseLite {
        spiffe_id: response.spiffe_id,
        claims: response.claims.unwrap(),
    })
}

struct ValidateJwtsvidResponseLite {
    spiffe_id: String,
    claims: prost_types::Struct,
}

#[tokio::test]
async fn the_spiffe_crate_verifies_our_tokens_with_the_jwt_bundles_we_serve() {
    // SPIFFE.md §4: header {alg,kid,typ}, claims sub/aud/exp/iat; JWT-SVID 1.3.11: kid in the
    // bundle. Workload API 1.7.9: no spiffe_id = every identity, default first.
    let mesh = Mesh::start(default_entries()).await;
    let client = mesh.spiffe_client().await;
    let svid = guard(client.fetch_jwt_svid(["svc", "other"], None))
        .await
        .unwrap();
    assert_eq!(svid.spiffe_id().to_string(), FIRST);
    assert_eq!(svid.hint(), Some("first"));
    let active_kid = mesh.ca.snapshot().active().unwrap().jwt.kid.clone();
    assert_eq!(svid.key_id(), active_kid);
    let claims = payload(svid.token());
    assert_eq!(claims["aud"], serde_json::json!(["svc", "other"]));
    let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 300, "jwt_svid_ttl");

    let all = guard(client.fetch_all_jwt_svids(["svc"], None))
        .await
        .unwrap();
    let ids: Vec<String> = all.iter().map(|s| s.spiffe_id().to_string()).collect();
    assert_eq!(ids, [FIRST, SECOND]);
    let second = spiffe::SpiffeId::new(SECOND).unwrap();
    let only = guard(client.fetch_jwt_svid(["svc"], Some(&second)))
        .await
        .unwrap();
    assert_eq!(only.spiffe_id().to_string(), SECOND);

    let bundles = guard(client.fetch_jwt_bundles()).await.unwrap();
    assert_eq!(bundles.len(), 2, "own plus mesh-b (the only entitled peer)");
    let own = bundles
        .get(&spiffe::TrustDomain::new("mesh-a.test").unwrap())
        .unwrap();
    assert!(own.find_jwt_authority(&active_kid).is_some());
    for token in [svid.token(), only.token()] {
        let checked = spiffe::JwtSvid::parse_and_validate(token, &bundles, &["svc"]).unwrap();
        assert_eq!(checked.key_id(), active_kid);
    }
    // And the server's own validator agrees, returning the claims (aud always a list).
    let valid = guard(client.validate_jwt_token("svc", svid.token()))
        .await
        .unwrap();
    assert_eq!(valid.spiffe_id().to_string(), FIRST);
    let raw = validate(&mesh, "other", svid.token()).await.unwrap();
    assert_eq!(raw.spiffe_id, FIRST);
    assert!(
        matches!(&raw.claims.fields["aud"].kind, Some(Kind::ListValue(l)) if l.values.len() == 2)
    );
    assert!(matches!(&raw.claims.fields["sub"].kind, Some(Kind::StringValue(s)) if s == FIRST));
}

#[tokio::test]
async fn validation_rejects_wrong_audience_expired_none_and_hs256_tokens() {
    // JWT-SVID 1.3.3 (alg allow-list), 1.3.7 (aud), 1.3.8 (exp with leeway): InvalidArgument.
    let mesh = Mesh::start(default_entries()).await;
    let client = mesh.spiffe_client().await;
    let token = guard(client.fetch_jwt_token(["svc"], None)).await.unwrap();
    let parts: Vec<&str> = token.split('.').collect();

    let wrong_aud = validate(&mesh, "not-svc", &token).await.err().unwrap();
    assert_eq!(wrong_aud.code(), Code::InvalidArgument);
    assert!(
        wrong_aud.message().contains("audience"),
        "{}",
        wrong_aud.message()
    );

    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{none_header}.{}.", parts[1]);
    // HS256 keyed with the published public key: the classic key-confusion forgery.
    let kid = mesh.ca.snapshot().active().unwrap().jwt.kid.clone();
    let hs_header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#));
    let signed = format!("{hs_header}.{}", parts[1]);
    let secret = meshtrust::bundle::jwks::jwt_jwks(&mesh.ca.snapshot().bundle);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let mac = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, signed.as_bytes()));
    let hs256 = format!("{signed}.{mac}");
    for (forged, alg) in [(unsigned, "none"), (hs256, "HS256")] {
        let status = validate(&mesh, "svc", &forged).await.err().unwrap();
        assert_eq!(status.code(), Code::InvalidArgument, "{alg}");
        assert_eq!(
            status.message(),
            format!("unsupported token algorithm {alg:?}")
        );
    }

    assert!(validate(&mesh, "svc", &token).await.is_ok(), "still valid");
    // Past exp (300 s) plus the 60 s leeway on our CA's clock.
    mesh.clock
        .as_ref()
        .unwrap()
        .advance(Duration::from_secs(300 + 61));
    let expired = validate(&mesh, "svc", &token).await.err().unwrap();
    assert_eq!(expired.code(), Code::InvalidArgument);
    assert_eq!(expired.message(), "token has expired");
}

#[tokio::test]
async fn tokens_of_entitled_peers_validate_and_other_trust_domains_do_not() {
    // Workload API 1.7.6: the bundle of the token's own trust domain, and only one the caller
    // may see (mesh-b via `first`; mesh-c via no entry).
    let mesh = Mesh::start(default_entries()).await;
    let now = SystemTime::now();
    let mint = |ca: &meshtrust::ca::Ca, sub: &str| {
        let snapshot = ca.snapshot();
        let key = &snapshot.active().unwrap().jwt;
        jwt::mint(
            key,
            &id(sub),
            &["svc".to_owned()],
            now + Duration::from_secs(60),
            now,
        )
        .unwrap()
    };
    let from_b = mint(&mesh.peer_b, "spiffe://mesh-b.test/api");
    let ok = validate(&mesh, "svc", &from_b).await.unwrap();
    assert_eq!(ok.spiffe_id, "spiffe://mesh-b.test/api");

    let from_c = mint(&mesh.peer_c, "spiffe://mesh-c.test/api");
    let status = validate(&mesh, "svc", &from_c).await.err().unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "no JWT bundle for trust domain mesh-c.test"
    );

    // A mesh-b key cannot speak for mesh-a (SPIFFE-ID 1.1.7).
    let forged = mint(&mesh.peer_b, FIRST);
    let status = validate(&mesh, "svc", &forged).await.err().unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn argument_errors_follow_spire() {
    // SPIFFE.md §3.4 and 1.7.5: mandatory fields; an unentitled spiffe_id is PermissionDenied.
    let mesh = Mesh::start(default_entries()).await;
    let mut client = mesh.raw_client().await;
    let cases = [
        (
            vec![],
            "",
            Code::InvalidArgument,
            "audience must be specified",
        ),
        (
            vec!["svc"],
            "spiffe://Mesh-A.test/x",
            Code::InvalidArgument,
            "invalid requested SPIFFE ID",
        ),
        (
            vec!["svc"],
            "spiffe://mesh-a.test/workload/other-user",
            Code::PermissionDenied,
            "no identity issued",
        ),
    ];
    for (audience, spiffe_id, code, message) in cases {
        let request = with_header(JwtsvidRequest {
            audience: audience.into_iter().map(str::to_owned).collect(),
            spiffe_id: spiffe_id.to_owned(),
        });
        let status = guard(client.fetch_jwtsvid(request)).await.unwrap_err();
        assert_eq!(status.code(), code, "{spiffe_id}");
        assert!(
            status.message().starts_with(message),
            "{}",
            status.message()
        );
    }
    for (audience, svid, message) in [
        ("", "x.y.z", "audience must be specified"),
        ("svc", "", "svid must be specified"),
    ] {
        let status = validate(&mesh, audience, svid).await.err().unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), message);
    }
}
