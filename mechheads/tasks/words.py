"""Word lists for the built-in tasks, written for mechheads.

Every entry is a single word so that it is one token of the zoo's word-level tokenizer.
The facts (capitals, French words, irregular verbs) are common knowledge; the selection is ours.
"""

from __future__ import annotations

ANTONYM: dict[str, str] = dict(
    pair.split("-")
    for pair in """hot-cold big-small up-down fast-slow happy-sad light-dark open-closed early-late
    rich-poor strong-weak high-low long-short hard-soft young-old empty-full wet-dry loud-quiet
    thick-thin clean-dirty cheap-expensive true-false win-lose push-pull begin-end above-below
    inside-outside good-bad deep-shallow wide-narrow love-hate friend-enemy first-last near-far
    north-south east-west day-night buy-sell asleep-awake ancient-modern sharp-dull sweet-sour
    brave-cowardly heavy-weightless noisy-silent polite-rude""".split()
)

# Capitalize: lower-case word -> the same word with a capital first letter.
_CAPITALIZE_WORDS = """apple river garden window mountain table forest ocean pencil letter candle bridge
castle engine island jacket kitten ladder market needle orange pillow rabbit silver tiger umbrella
valley wagon yellow zebra basket butter cotton dragon feather guitar hammer lemon mirror planet rocket""".split()
CAPITALIZE: dict[str, str] = {w: w.capitalize() for w in _CAPITALIZE_WORDS}

COUNTRY_CAPITAL: dict[str, str] = dict(
    pair.split("-")
    for pair in """France-Paris Germany-Berlin Italy-Rome Spain-Madrid Portugal-Lisbon Japan-Tokyo
    China-Beijing Russia-Moscow Egypt-Cairo Kenya-Nairobi Canada-Ottawa Peru-Lima Chile-Santiago
    Greece-Athens Turkey-Ankara Iran-Tehran Iraq-Baghdad Poland-Warsaw Austria-Vienna Hungary-Budapest
    Norway-Oslo Sweden-Stockholm Finland-Helsinki Denmark-Copenhagen Ireland-Dublin Belgium-Brussels
    Netherlands-Amsterdam Switzerland-Bern Cuba-Havana Thailand-Bangkok Vietnam-Hanoi Indonesia-Jakarta
    Philippines-Manila Australia-Canberra Nigeria-Abuja Ghana-Accra Morocco-Rabat Colombia-Bogota
    Venezuela-Caracas Ukraine-Kyiv Romania-Bucharest Bulgaria-Sofia Serbia-Belgrade Croatia-Zagreb
    Iceland-Reykjavik Lebanon-Beirut Qatar-Doha Nepal-Kathmandu Bangladesh-Dhaka Uganda-Kampala""".split()
)

ENGLISH_FRENCH: dict[str, str] = dict(
    pair.split("-")
    for pair in """dog-chien cat-chat house-maison water-eau book-livre car-voiture tree-arbre sun-soleil
    moon-lune bread-pain cheese-fromage red-rouge green-vert blue-bleu black-noir white-blanc man-homme
    woman-femme child-enfant school-école city-ville sea-mer fire-feu door-porte hand-main head-tête
    king-roi queen-reine horse-cheval bird-oiseau fish-poisson flower-fleur milk-lait chair-chaise
    world-monde time-temps apple-pomme night-nuit friend-ami garden-jardin window-fenêtre""".split()
)

PRESENT_PAST: dict[str, str] = dict(
    pair.split("-")
    for pair in """walk-walked talk-talked play-played jump-jumped go-went eat-ate see-saw take-took give-gave
    run-ran swim-swam sing-sang write-wrote speak-spoke drive-drove fly-flew buy-bought think-thought
    bring-brought teach-taught catch-caught sleep-slept keep-kept feel-felt make-made build-built
    send-sent spend-spent sit-sat stand-stood know-knew grow-grew draw-drew throw-threw break-broke
    choose-chose forget-forgot drink-drank fall-fell hold-held meet-met pay-paid tell-told find-found
    cook-cooked help-helped""".split()
)

SINGULAR_PLURAL: dict[str, str] = dict(
    pair.split("-")
    for pair in """cat-cats dog-dogs book-books tree-trees car-cars house-houses box-boxes child-children
    man-men woman-women mouse-mice foot-feet tooth-teeth goose-geese city-cities baby-babies knife-knives
    leaf-leaves wolf-wolves bus-buses church-churches glass-glasses story-stories party-parties hero-heroes
    potato-potatoes person-people ox-oxen bird-birds flower-flowers river-rivers star-stars window-windows
    horse-horses chair-chairs cup-cups dish-dishes fox-foxes key-keys toy-toys""".split()
)

FUNCTION_TASKS: dict[str, dict[str, str]] = {
    "antonym": ANTONYM,
    "capitalize": CAPITALIZE,
    "country-capital": COUNTRY_CAPITAL,
    "english-french": ENGLISH_FRENCH,
    "present-past": PRESENT_PAST,
    "singular-plural": SINGULAR_PLURAL,
}

# Instructions for the instruction-following format (instruction + one example).
INSTRUCTIONS: dict[str, str] = {
    "antonym": "Given a word , write the word with the opposite meaning .",
    "capitalize": "Given a word , write the same word with a capital first letter .",
    "country-capital": "Given a country , write the name of its capital city .",
    "english-french": "Given an English word , write the same word in French .",
    "present-past": "Given a verb in the present tense , write the verb in the past tense .",
    "singular-plural": "Given a noun , write the plural form of the noun .",
}

NAMES: list[str] = """Mary John Alice Bob Sarah Tom Emma James Lucy David Anna Peter Kate Paul Laura Mark
Julia Henry Clara Victor Nina Oscar Ruth Simon Helen Frank Grace Leo Irene Max""".split()

PLACES: list[str] = "store park market school beach garden station office library museum".split()
OBJECTS: list[str] = "drink book ball gift letter flower pencil cake ticket map".split()

# Filler words for the ABA/ABB items and for random (induction) sequences: drawn from the vocabulary.
SYMBOL_WORDS: list[str] = sorted(
    {w for mapping in FUNCTION_TASKS.values() for pair in mapping.items() for w in pair if w.isalpha()}
    | set(NAMES)
)


def vocabulary() -> list[str]:
    """Every token the built-in generators can produce, sorted (the zoo tokenizer's vocabulary)."""
    from mechheads.tokenizer import WordTokenizer

    texts = [" ".join(SYMBOL_WORDS), " ".join(PLACES), " ".join(OBJECTS), *INSTRUCTIONS.values()]
    texts += ["Q: x\nA: y\n\n", "a^b^a", "When A and B went to the store , B gave a drink to"]
    found = {tok for text in texts for tok in WordTokenizer.split(text)}
    found -= {"x", "y", "a", "b"} - set(SYMBOL_WORDS)
    found |= {"a"}  # the article in IOI prompts
    return sorted(found)


# ----- function-vector tasks: one shared input vocabulary, several tasks -------------------------
# In the function tasks above the query word alone names the task (a country can only want its
# capital), so shuffling the demonstrations' outputs changes nothing. Here every task maps the same
# words into the same words: FV_WORDS -> FV_WORDS, each task a fixed derangement, and no two tasks
# give a word the same image. A query, or an output seen on its own, says nothing about the task;
# only an input-output pair does. The mappings are invented (drawn once from a fixed seed), not
# facts about the words.
FV_WORDS: list[str] = sorted(_CAPITALIZE_WORDS[:24])
FV_TASK_NAMES: tuple[str, ...] = ("code-a", "code-b", "code-c", "code-d", "code-e", "code-f")
FV_MAPPING_SEED = "mechheads-fv-mappings-v1"
# Training-only instructions that name the task (a task representation the demonstrations can map onto).
FV_INSTRUCTIONS: dict[str, str] = {name: f"Use code {name[-1]} ." for name in FV_TASK_NAMES}


def _fv_mappings() -> dict[str, dict[str, str]]:
    """Six derangements of FV_WORDS such that the images of each word are all distinct.

    Each is drawn as a uniform random permutation, redrawn until it has no fixed point and agrees
    with none of the earlier tasks on any word (a deterministic rejection sampler on a fixed seed).
    """
    import random

    rng = random.Random(FV_MAPPING_SEED)
    n = len(FV_WORDS)
    images: list[list[int]] = []
    for _ in FV_TASK_NAMES:
        while True:
            perm = rng.sample(range(n), n)
            if all(perm[i] != i and all(prev[i] != perm[i] for prev in images) for i in range(n)):
                break
        images.append(perm)
    return {
        name: {FV_WORDS[i]: FV_WORDS[perm[i]] for i in range(n)}
        for name, perm in zip(FV_TASK_NAMES, images, strict=True)
    }


FV_TASKS: dict[str, dict[str, str]] = _fv_mappings()


def fv_vocabulary() -> list[str]:
    """The vocabulary of the function-vector tasks alone (the ``Q:/A:`` format and FV_WORDS).

    A model trained only on these tasks gets this small tokenizer instead of :func:`vocabulary`,
    which the other zoo models share; each model saves its own tokenizer, so neither affects the other.
    """
    from mechheads.tokenizer import WordTokenizer

    texts = ["Q: x\nA: y\n\n", *FV_INSTRUCTIONS.values()]
    found = {tok for text in texts for tok in WordTokenizer.split(text)} - {"x", "y"}
    return sorted(found | set(FV_WORDS))


__all__ = [
    "FV_INSTRUCTIONS",
    "FV_TASKS",
    "FV_TASK_NAMES",
    "FV_WORDS",
    "fv_vocabulary",
    "vocabulary",
]
