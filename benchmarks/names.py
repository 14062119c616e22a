"""Deterministic patient demographics for the synthetic corpus."""

from __future__ import annotations

import random

from .datasets import Patient

FAMILY = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Dubois",
    "Janssens",
    "Peeters",
    "Kowalski",
    "Novak",
    "Rossi",
    "Bianchi",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Hoffmann",
]
GIVEN = [
    "James",
    "Mary",
    "John",
    "Patricia",
    "Robert",
    "Jennifer",
    "Michael",
    "Linda",
    "William",
    "Elizabeth",
    "David",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Anna",
    "Marie",
    "Pierre",
    "Luc",
    "Sofia",
    "Lukas",
    "Emma",
    "Noah",
    "Mia",
    "Elias",
    "Lea",
    "Jan",
    "Eva",
    "Piotr",
    "Giulia",
]

LATIN1_PATIENT = ("Müller^Jürgen", "ISO_IR 100")
UTF8_PATIENT = ("山田^太郎", "ISO_IR 192")


def make_patients(count: int, rng: random.Random, prefix: str) -> list[Patient]:
    """`count` patients; patient 1 has a Latin-1 name and patient 2 a UTF-8 name."""
    out: list[Patient] = []
    for i in range(count):
        charset: str | None = None
        if i == 1:
            name, charset = LATIN1_PATIENT
        elif i == 2:
            name, charset = UTF8_PATIENT
        else:
            name = f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}"
            if rng.random() < 0.25:
                name += f"^{rng.choice('ABCDEFGHJKLMNPRSTW')}"
        year = rng.randint(1930, 2020)
        birth = f"{year:04d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        sex = rng.choice("MF") if rng.random() < 0.97 else "O"
        out.append(Patient(f"{prefix}{i:06d}", name, birth, sex, charset))
    return out


def random_date(rng: random.Random, first_year: int = 2015, last_year: int = 2024) -> str:
    return (
        f"{rng.randint(first_year, last_year):04d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    )


def random_time(rng: random.Random) -> str:
    return f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}"


def referring(rng: random.Random) -> str:
    return f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}^^Dr."
