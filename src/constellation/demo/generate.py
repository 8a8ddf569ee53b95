"""Compose the demo's classification data sets from the hand-written phrase lists below.

Deterministic (fixed seed); run `python src/constellation/demo/generate.py` to rewrite the JSONL files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).parent
SEED = 7
N_TRAIN, N_TEST = 260, 70

# Shared fillers: every label uses the same nouns, so the words that decide a label are the cue
# phrases, not the topic vocabulary (that is what makes zero-shot similarity weak here).
PRODUCTS = ["blender", "desk lamp", "rain jacket", "phone case", "coffee grinder", "backpack",
            "air fryer", "office chair", "bike light", "kettle", "headphones", "yoga mat"]  # fmt: skip
SYSTEMS = ["checkout", "login page", "mobile app", "search", "invoice export", "payment API",
           "nightly backup", "order dashboard", "email notifications", "CSV import"]  # fmt: skip
TIMES = ["this morning", "since yesterday", "for an hour", "since the last release", "today",
         "since Friday", "after the update"]  # fmt: skip
OPENERS = ["", "", "", "Hi team, ", "Hello, ", "Quick note: ", "FYI, ", "Hey, ", "Morning all, "]
CLOSERS = ["", "", "", " Thanks.", " Cheers.", " Thanks in advance!", " Let me know.", " Regards, Sam."]

SENTIMENT = {
    "positive": [
        "I expected the {p} to be flimsy, but it has held up beautifully.",
        "Honestly did not think I'd keep the {p}, and now I use it every day.",
        "The {p} is not cheap, yet I'd pay that price again without thinking.",
        "My last {p} died in a month; this one is still going strong after a year.",
        "Not a single complaint about the {p} so far.",
        "The {p} does exactly what it says, and the build feels solid.",
        "Skeptical at first, but the {p} won me over within a week.",
        "Bought the {p} as a gift and ended up ordering one for myself.",
        "Can't fault the {p}: quiet, sturdy and easy to clean.",
        "The {p} arrived early and works better than the one I returned elsewhere.",
        "Five stars for the {p}, my partner keeps borrowing it.",
        "I had my doubts about the {p}, no doubts left.",
    ],
    "negative": [
        "The {p} looked great in the photos, which is the only nice thing I can say.",
        "I wanted to love the {p}, but it stopped working after two weeks.",
        "Not what I'd call value for money: the {p} feels like cheap plastic.",
        "The {p} was fine for a day, then the switch started sticking.",
        "Returned the {p}; the noise alone was unbearable.",
        "Save your money and skip the {p}.",
        "Customer service was polite, shame the {p} itself is junk.",
        "The {p} is nowhere near as sturdy as the description claims.",
        "Second {p} in a month with the same fault, I give up.",
        "Pretty box, disappointing {p}.",
        "I'd hardly call the {p} usable; it overheats after ten minutes.",
        "The {p} broke the first time I dropped it on carpet.",
    ],
    "neutral": [
        "The {p} arrived on Tuesday in a plain brown box.",
        "I ordered the {p} in grey; it is the same size as listed.",
        "Does the {p} come with a spare part, or is that sold separately?",
        "Using the {p} mostly on weekends, too early to judge.",
        "The {p} replaced an older model I had for six years.",
        "The {p} ships with a manual in four languages.",
        "Bought the {p} for the office, we'll see how it does.",
        "The {p} is the medium version, which fits on my shelf.",
        "Got the {p} during the sale along with some other items.",
        "The {p} uses a standard USB-C cable.",
        "Haven't unpacked the {p} yet, will update later.",
        "The {p} is heavier than my previous one, for what it's worth.",
    ],
}

TICKETS = {
    "refund": [
        "The {p} arrived cracked and I would like my money back.",
        "Please reverse the charge for the {p}, I sent it back last week.",
        "I returned the {p} ten days ago and still haven't seen the money.",
        "Can I get reimbursed for the {p}? It isn't what I ordered.",
        "You charged me for the {p} but the order was cancelled, please pay it back.",
        "I'd like a refund for the {p} rather than a replacement.",
        "The return label for the {p} worked; when will the credit reach my card?",
        "Please refund the shipping fee, the {p} came a week late.",
    ],
    "shipping": [
        "Tracking for my {p} has said in transit for nine days.",
        "The courier left the {p} at the wrong address.",
        "Where is my {p}? The estimated delivery date passed on Monday.",
        "Can you ship the {p} to my office instead of my home?",
        "My {p} shows delivered but there is nothing at the door.",
        "Is express delivery available for the {p}?",
        "The parcel with the {p} is stuck at customs.",
        "I'm not asking for my money back, I just want to know when the {p} will arrive.",
    ],
    "account_access": [
        "I can't log in to check on my {p} order; the password reset email never comes.",
        "My account got locked after three attempts and I need to reorder the {p}.",
        "The two-factor code is rejected every time I try to sign in.",
        "I changed my phone number and now I can't get into my account.",
        "The reset link expires before I can click it.",
        "Someone else's email seems to be on my account, I can't access my order history.",
        "Sign-in keeps sending me back to the start page {t}.",
        "How do I recover my account if I no longer have the old email address?",
    ],
    "bug_report": [
        "The {s} throws an error when I try to add the {p} to my cart.",
        "Your {s} shows the wrong price for the {p}.",
        "The {s} crashes every time I open the order for my {p}.",
        "Clicking save on the {s} does nothing {t}.",
        "The {s} displays my {p} order twice.",
        "Filters in the {s} reset themselves on every page.",
        "The {s} shows a blank screen {t}.",
        "Dark mode makes the buttons in the {s} invisible.",
    ],
    "cancel_subscription": [
        "Please stop my monthly plan, I no longer need the {p} refills.",
        "How do I end the membership before the next renewal?",
        "I want to close my premium plan at the end of this month.",
        "Don't renew my yearly plan, I'm switching providers.",
        "Cancel the recurring delivery of {p} accessories, please.",
        "I'd like to unsubscribe from the paid tier, not from the newsletter.",
        "My trial ends soon and I don't want it to turn into a paid plan.",
        "Please terminate the auto-renewal on my account.",
    ],
}

TOPICS = {
    "frontend": [
        "The {c} component re-renders on every keystroke in the form.",
        "Buttons overlap the header on narrow screens in {b}.",
        "Should we move the {c} styles to CSS modules?",
        "The hydration warning shows up on the {c} page in {b}.",
        "Font loading causes a layout shift on the {c} view.",
        "The dropdown in the {c} is not keyboard accessible.",
        "Bundle size jumped after importing the date picker into {c}.",
        "The {c} table needs sticky columns when scrolling sideways.",
    ],
    "backend": [
        "The {c} endpoint returns 500 when the payload has an empty list.",
        "We should add pagination to the {c} query, it loads every row.",
        "The {c} service holds a database transaction open during the HTTP call.",
        "Rate limiting on the {c} handler counts retries twice.",
        "The ORM issues one query per item in the {c} listing.",
        "Can we version the {c} API before changing the response shape?",
        "The background job for {c} retries forever on a bad record.",
        "Serialization of the {c} model drops timezone info.",
    ],
    "infra": [
        "The {c} pods get OOM-killed during the nightly peak.",
        "Terraform wants to recreate the {c} load balancer on every plan.",
        "The CI runner for {c} is out of disk again.",
        "DNS for the {c} staging host points to the old cluster.",
        "Autoscaling on the {c} group lags by ten minutes.",
        "The TLS certificate for {c} expires next week.",
        "Helm upgrade of {c} hangs on the readiness probe.",
        "The {c} container image is 2 GB, can we slim it down?",
    ],
    "data": [
        "The {c} dashboard numbers differ from the warehouse table.",
        "The nightly {c} ETL skipped yesterday's partition.",
        "Can someone add a column for refunds to the {c} report?",
        "Deduplication in the {c} pipeline drops legitimate rows.",
        "The {c} metric double counts users who switch devices.",
        "Backfilling {c} events for March takes eight hours.",
        "The schema of the {c} export changed without notice.",
        "We need a weekly cohort table for {c} retention.",
    ],
    "mobile": [
        "The {c} screen freezes on older Android phones.",
        "Push notifications for {c} arrive twice on iOS.",
        "The app store review flagged the {c} permission prompt.",
        "Offline mode loses the {c} draft when the app is backgrounded.",
        "The {c} tab ignores the system font size setting.",
        "Deep links to {c} open the home screen instead.",
        "Battery drain spikes while the {c} map is open.",
        "The {c} widget on the lock screen shows stale data.",
    ],
}
COMPONENTS = ["checkout", "profile", "search", "billing", "onboarding", "orders", "settings", "reports"]
BROWSERS = ["Safari", "Firefox", "Chrome", "Edge"]

URGENCY = {
    "critical": [
        "The {s} is down for every customer {t}, we are losing orders right now.",
        "Nobody can use the {s}; this is blocking all sales.",
        "Data from the {s} is being deleted, please stop it immediately.",
        "Payments through the {s} fail for all users, need someone on it now.",
        "Security issue: the {s} exposes other customers' details.",
        "Total outage of the {s}, the whole team is blocked.",
    ],
    "high": [
        "The {s} fails for about a third of users {t}.",
        "Our biggest client can't use the {s} and the demo is tomorrow.",
        "The {s} is very slow {t}, customers are starting to complain.",
        "Part of the {s} is broken and the workaround is painful.",
        "The {s} errors for every EU customer {t}; others are fine.",
        "We need a fix for the {s} before Monday's launch.",
    ],
    "normal": [
        "The {s} shows an error for one customer, there is a workaround.",
        "Can you look at the {s} this week? A few reports came in.",
        "The {s} occasionally times out, retrying works.",
        "One report says the {s} mislabels a field.",
        "The {s} sorting looks off, not blocking anyone.",
        "Please check the {s} logs when you have a moment this sprint.",
    ],
    "low": [
        "Small typo on the {s}, whenever you get a chance.",
        "Would be nice if the {s} remembered my filter, no rush.",
        "Idea for later: a dark theme for the {s}.",
        "The {s} icon looks slightly blurry on my monitor, purely cosmetic.",
        "Not urgent at all: the {s} tooltip wording could be friendlier.",
        "Sometime next quarter, could the {s} export include a header row?",
    ],
}

# Side remarks customers add to tickets; they name other intents' words (delivery, account, app,
# subscription, payment), so a classifier must learn which clause carries the request.
TICKET_ASIDES = [
    "",
    "",
    "I've been a subscriber for three years. ",
    "The app and the website both say the same thing. ",
    "Delivery was quick last time. ",
    "I already logged out and back in. ",
    "My card was charged the usual amount. ",
    "I tried the mobile app too. ",
    "Order number 4417, in case you need it. ",
    "Your courier is usually reliable. ",
    "My account email is the one on file. ",
    "I paid with a gift card. ",
]

LABEL_DESCRIPTIONS = {
    "sentiment": {
        "positive": "The customer is satisfied with the product and recommends it.",
        "negative": "The customer is unhappy with the product and would not recommend it.",
        "neutral": "The customer states facts about the product without expressing an opinion.",
    },
    "ticket-intent": {
        "refund": "The customer asks for their money back for an order.",
        "shipping": "The customer asks about the delivery or location of a parcel.",
        "account_access": "The customer cannot log in or access their account.",
        "bug_report": "The customer reports a software error on the website or app.",
        "cancel_subscription": "The customer wants to cancel a subscription or recurring plan.",
    },
    "topic": {
        "frontend": "A question about web user interface code, styling or browser rendering.",
        "backend": "A question about server code, APIs or database queries.",
        "infra": "A question about deployment, servers, Kubernetes or cloud infrastructure.",
        "data": "A question about analytics, data pipelines, reports or the data warehouse.",
        "mobile": "A question about the iOS or Android mobile app.",
    },
    "urgency": {
        "critical": "A complete outage or security incident that needs action immediately.",
        "high": "A serious problem affecting many users that should be fixed today.",
        "normal": "A minor problem with a workaround that can be handled this week.",
        "low": "A cosmetic issue or a suggestion with no time pressure.",
    },
}


def _fill(template: str, rng: random.Random, asides: list[str]) -> str:
    body = rng.choice(asides) + template.format(
        p=rng.choice(PRODUCTS),
        s=rng.choice(SYSTEMS),
        t=rng.choice(TIMES),
        c=rng.choice(COMPONENTS),
        b=rng.choice(BROWSERS),
    )
    return f"{rng.choice(OPENERS)}{body}{rng.choice(CLOSERS)}"


def _compose(templates: dict[str, list[str]], rng: random.Random, asides: list[str]) -> list[dict[str, str]]:
    """Unique (text, label) rows, balanced across labels, in a seeded order."""
    per_label = -(-(N_TRAIN + N_TEST) // len(templates))
    rows: list[dict[str, str]] = []
    for label, options in templates.items():
        texts: set[str] = set()
        for _ in range(per_label * 50):  # bounded: stop once enough distinct sentences exist
            if len(texts) == per_label:
                break
            texts.add(_fill(rng.choice(options), rng, asides))
        rows += [{"text": t, "label": label} for t in sorted(texts)]
    rng.shuffle(rows)
    return rows


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(SEED)
    for name, templates, asides in [
        ("sentiment", SENTIMENT, [""]),
        ("ticket-intent", TICKETS, TICKET_ASIDES),
        ("topic", TOPICS, [""]),
        ("urgency", URGENCY, [""]),
    ]:
        rows = _compose(templates, rng, asides)
        out = HERE / name
        out.mkdir(exist_ok=True)
        _write_jsonl(out / "train.jsonl", rows[:N_TRAIN])
        _write_jsonl(out / "test.jsonl", rows[N_TRAIN : N_TRAIN + N_TEST])
        (out / "labels.json").write_text(json.dumps(LABEL_DESCRIPTIONS[name], indent=2) + "\n")
        print(f"{name}: {min(len(rows), N_TRAIN)} train, {len(rows[N_TRAIN : N_TRAIN + N_TEST])} test")


if __name__ == "__main__":
    main()
