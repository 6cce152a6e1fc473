"""Chat services for the tests (none is reachable from where eventflow is tested): one HTTP
server that implements the documented request contract of each strictly, and refuses what the
service would refuse.

  POST /teams-workflow           a message with one Adaptive Card attachment, the card valid
                                 against the Adaptive Card 1.4 JSON schema (argv[1]); 202
  POST /google-chat              `text` or `cardsV2` (cardId, card.sections[].widgets[]),
                                 `thread.threadKey` only with ?messageReplyOption=...; at most
                                 32,000 bytes; 200
  POST /discord                  `content` (<= 2000) or `embeds` (<= 10; title <= 256,
                                 description <= 4096, all embeds <= 6000 characters; color
                                 0..0xFFFFFF); 204
  POST /bot<token>/sendMessage   Telegram: `chat_id`, `text` of 1..4096 characters after
                                 entity parsing, `parse_mode: HTML` with only Telegram's tags,
                                 balanced, and only its entities; {"ok": true} or
                                 {"ok": false, "error_code": 400, ...}
  POST /mattermost               `text` or `attachments`, a post <= 16,383 characters; 200

Usage: chat_receiver.py ADAPTIVE_CARD_SCHEMA. Prints {"port": N}, then one JSON line per
request: the path, the status, why it was refused (if it was), and `visible`: the text a reader
would see (markup and escapes resolved).
"""

import html
import json
import re
import sys
import threading
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jsonschema

with open(sys.argv[1], encoding="utf-8") as f:
    CARD_SCHEMA = json.load(f)
CARD_VALIDATOR = jsonschema.Draft6Validator(CARD_SCHEMA)
lock = threading.Lock()


class Refused(Exception):
    pass


def need(cond, why):
    if not cond:
        raise Refused(why)


def teams(body, query):
    need(body.get("type") == "message", "type must be message")
    atts = body.get("attachments")
    need(isinstance(atts, list) and len(atts) == 1, "one attachment")
    a = atts[0]
    need(a.get("contentType") == "application/vnd.microsoft.card.adaptive", "contentType")
    need("contentUrl" in a, "contentUrl (null) is expected by the Workflows template")
    card = a.get("content")
    errors = sorted(CARD_VALIDATOR.iter_errors(card), key=lambda e: list(e.path))
    need(not errors, "; ".join(e.message[:200] for e in errors[:3]))
    need(card.get("version") in ("1.4", "1.5"), "version")
    return "\n".join(b.get("text", "") for b in card["body"] if b.get("type") == "TextBlock")


def google_chat(body, query):
    need("text" in body or "cardsV2" in body, "text or cardsV2")
    visible = body.get("text", "")
    for c in body.get("cardsV2", []):
        need(isinstance(c.get("cardId"), str), "cardId")
        sections = c["card"]["sections"]
        for s in sections:
            for w in s["widgets"]:
                t = w.get("textParagraph", {}).get("text")
                need(isinstance(t, str), "textParagraph.text")
                visible += html.unescape(t.replace("<br>", "\n").replace("<b>", "").replace("</b>", ""))
    if "thread" in body:
        need(isinstance(body["thread"].get("threadKey"), str), "threadKey")
        need("messageReplyOption" in query, "a thread key without messageReplyOption is ignored")
    return visible


def discord(body, query):
    content = body.get("content", "")
    embeds = body.get("embeds", [])
    need(content or embeds, "content or embeds")
    need(len(content) <= 2000, "content over 2000")
    need(len(embeds) <= 10, "over 10 embeds")
    total = 0
    visible = content
    for e in embeds:
        title, desc = e.get("title", ""), e.get("description", "")
        need(len(title) <= 256, "embed title over 256")
        need(len(desc) <= 4096, "embed description over 4096")
        c = e.get("color", 0)
        need(isinstance(c, int) and 0 <= c <= 0xFFFFFF, "color")
        total += len(title) + len(desc)
        visible += re.sub(r"\\(.)", r"\1", desc.replace("**", ""))
    need(total <= 6000, "embeds over 6000 characters")
    return visible


TELEGRAM_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre",
                 "span", "tg-spoiler", "blockquote"}


class TelegramHTML(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.stack, self.text = [], []

    def handle_starttag(self, tag, attrs):
        need(tag in TELEGRAM_TAGS, f"can't parse entities: unsupported start tag \"{tag}\"")
        self.stack.append(tag)

    def handle_endtag(self, tag):
        need(self.stack and self.stack[-1] == tag, f"can't parse entities: can't find end tag corresponding to start tag \"{tag}\"")
        self.stack.pop()

    def handle_data(self, data):
        need("<" not in data and ">" not in data, "can't parse entities: unescaped < or >")
        self.text.append(data)

    def handle_entityref(self, name):
        need(name in ("lt", "gt", "amp", "quot"), f"can't parse entities: unsupported entity &{name};")
        self.text.append(html.unescape(f"&{name};"))

    def handle_charref(self, name):
        self.text.append(html.unescape(f"&#{name};"))


def telegram(body, query):
    need(body.get("chat_id") not in (None, ""), "chat_id is empty")
    need(body.get("parse_mode") == "HTML", "parse_mode")
    text = body.get("text", "")
    need(isinstance(text, str) and text, "message text is empty")
    need(not re.search(r"&(?!(lt|gt|amp|quot|#\d+);)", text), "can't parse entities: a bare &")
    p = TelegramHTML()
    p.feed(text)
    p.close()
    need(not p.stack, "can't parse entities: unclosed tag")
    visible = "".join(p.text)
    need(len(visible.encode("utf-16-le")) // 2 <= 4096, "message is too long")
    return visible


def mattermost(body, query):
    need("text" in body or "attachments" in body, "text or attachments")
    visible = body.get("text", "") + "".join(a.get("text", "") for a in body.get("attachments", []))
    need(len(visible) <= 16383, "post over 16383 characters")
    return visible


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, obj):
        data = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        url = urlparse(self.path)
        query = parse_qs(url.query)
        path = url.path
        if path == "/teams-workflow":
            check, ok = teams, (202, None)
        elif path == "/google-chat":
            check, ok = google_chat, (200, {"name": "spaces/x/messages/y"})
        elif path == "/discord":
            check, ok = discord, (204, None)
        elif re.fullmatch(r"/bot[^/]+/sendMessage", path):
            check, ok = telegram, (200, {"ok": True, "result": {"message_id": 1}})
        elif path == "/mattermost":
            check, ok = mattermost, (200, None)
        else:
            self.reply(404, {"error": path})
            return
        line = {"path": path}
        try:
            need(self.headers.get("Content-Type", "").startswith("application/json"), "Content-Type")
            body = json.loads(raw)
            need(len(raw) <= 32000 or path != "/google-chat", "over 32,000 bytes")
            line["visible"] = check(body, query)
            line["body"] = body
            line["status"] = ok[0]
            self.reply(*ok)
        except (Refused, KeyError, TypeError, ValueError) as e:
            line["status"] = 400
            line["refused"] = str(e)
            if path.endswith("/sendMessage"):
                self.reply(400, {"ok": False, "error_code": 400, "description": f"Bad Request: {e}"})
            else:
                self.reply(400, {"error": str(e)})
        with lock:
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdout.write(json.dumps({"port": server.server_address[1]}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
