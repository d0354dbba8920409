mod common;
use common::*;

#[tokio::test]
async fn harness_works() {
    let up = spawn_upstream().await;
    let gw = spawn_gateway(&module_toml(
        "agreements",
        &["/public/v1/agreements"],
        &up.url(),
        "",
    ))
    .await;
    let (_, key) = gw.token(&["agreements"]).await;
    let a = get(&gw.url("/public/v1/agreements/x?y=1"), Some(&key)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(up.last().unwrap().target, "/public/v1/agreements/x?y=1");
    assert!(!gw.admin_key.is_empty());
    gw.stop().await;
}
