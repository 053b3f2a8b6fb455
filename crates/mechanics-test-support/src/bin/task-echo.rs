//! `task-echo`: the smallest worker that speaks the http worker contract, for the container
//! workers' tests. It has no dependencies beyond `std`, so an image holding it needs only the
//! C library and the loader.
//!
//! It listens on `0.0.0.0:$PORT` (8080 without it) and answers `GET /healthz` with `200`, and
//! `POST /task` with `{ "request": <the body>, "model": $MODEL, "token_reversed": <$API_TOKEN
//! reversed> }`: a test sees the container's environment without a secret ever appearing as
//! such in a result. With the argument `exit` it writes a line to stderr and exits with status 3
//! at once (an image that cannot start). A task whose payload has `"crash":true` makes it write
//! `$API_TOKEN` to stderr and exit with status 3 without answering: a careless worker whose
//! secret reaches its log, which the server must redact wherever it quotes that log.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("exit") {
        say("told to exit at once");
        std::process::exit(3);
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_owned());
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(listener) => listener,
        Err(err) => {
            say(&format!("cannot listen on port {port}: {err}"));
            std::process::exit(1);
        }
    };
    say(&format!("listening on port {port}"));
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            if let Err(err) = serve(stream) {
                say(&err.to_string());
            }
        });
    }
}

/// One line on stderr, which the container runtime keeps as the container's log.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "task-echo: {line}");
}

/// Answers one request, then closes the connection.
fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, answer) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", "{\"ok\":true}".to_owned()),
        ("POST", "/task") => {
            let request = String::from_utf8_lossy(&body);
            if request.contains("\"crash\":true") {
                let token = std::env::var("API_TOKEN").unwrap_or_default();
                say(&format!("crashing as told; API_TOKEN={token}"));
                std::process::exit(3);
            }
            let model = std::env::var("MODEL").unwrap_or_default();
            let token: String = std::env::var("API_TOKEN")
                .unwrap_or_default()
                .chars()
                .rev()
                .collect();
            (
                "200 OK",
                format!(
                    "{{\"request\":{request},\"model\":{},\"token_reversed\":{}}}",
                    json_string(&model),
                    json_string(&token)
                ),
            )
        }
        _ => ("404 Not Found", "{\"error\":\"not found\"}".to_owned()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{answer}",
        answer.len()
    )?;
    stream.flush()
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
