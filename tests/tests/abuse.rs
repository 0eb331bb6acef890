//! What one hostile client can do, against real processes on 127.0.0.1, bounded in count
//! and time. Each test prints what it measured.

use anyhow::{Result, ensure};
use serde_json::json;
use std::time::Instant;
use tutti_signaling::config::{LocalRooms, RoomsFile};
use tutti_tests::gateway::{GatewayClient, local_options, start, ws_url};

fn rooms(toml_text: &str) -> Result<LocalRooms> {
    let file: RoomsFile = toml::from_str(toml_text)?;
    LocalRooms::from_file(file, false).map_err(anyhow::Error::msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_over_many_sockets_is_throttled_per_address() -> Result<()> {
    let system = start(local_options(rooms(
        "[[rooms]]\nname = \"lesson\"\nmaxParticipants = 4\npassword = \"arco\"\n",
    )?))
    .await?;
    let url = ws_url(&system);
    // 60 guesses over 13 sockets, as fast as the gateway answers.
    let started = Instant::now();
    let (mut evaluated, mut throttled, mut other) = (0, 0, Vec::new());
    for socket in 0..13 {
        let mut client = GatewayClient::connect(&url).await?;
        for guess in 0..5 {
            if socket * 5 + guess >= 60 {
                break;
            }
            let reply = client
                .join(json!({"room": "lesson", "name": format!("g{socket}-{guess}"), "password": format!("guess-{socket}-{guess}")}))
                .await;
            match reply {
                Err(err) if err.to_string() == "wrong_password" => evaluated += 1,
                Err(err) if err.to_string() == "rate_limited" => throttled += 1,
                other_reply => other.push(format!("{other_reply:?}")),
            }
        }
    }
    let elapsed = started.elapsed();
    // The right password, from the same address, while it is locked out.
    let mut client = GatewayClient::connect(&url).await?;
    let right = client
        .join(json!({"room": "lesson", "name": "Attacker", "password": "arco"}))
        .await;
    println!(
        "abuse: 60 guesses over 13 sockets in {:.2} s: {evaluated} evaluated, {throttled} refused unevaluated, other {other:?}; the right password then: {}",
        elapsed.as_secs_f64(),
        match &right {
            Ok(_) => "joined".to_owned(),
            Err(err) => err.to_string(),
        }
    );
    ensure!(other.is_empty(), "unexpected replies: {other:?}");
    // 3 free, then one per lockout (2 s, 4 s, …): within a few seconds, about 4 checks.
    ensure!(
        evaluated <= 3 + 1 + elapsed.as_secs() as usize,
        "{evaluated} guesses evaluated in {elapsed:?}"
    );
    ensure!(
        matches!(&right, Err(err) if err.to_string() == "rate_limited"),
        "a locked-out address does not get its password checked: {right:?}"
    );
    Ok(())
}
