"""Dialogue lines shared by the benchmarks."""

#: Distinct two-speaker lines of 60 to 120 bytes; request or user i speaks line i (cycled, numbered past the end).
SCRIPTS = [
    "[S1] Did you catch the game last night? [S2] Only the second half, sadly.",
    "[S1] The train is late again. [S2] Of course it is. (sighs) Every single Monday.",
    "[S1] Could you pass the salt? [S2] Here you go. [S1] Thanks, this soup needs it.",
    "[S1] I finally finished the book. [S2] And? [S1] The ending was not what I expected at all.",
    "[S1] Is it going to rain today? [S2] The forecast says clouds, but take an umbrella anyway.",
    "[S1] We should paint the kitchen yellow. [S2] Yellow? [S1] A soft yellow. Trust me.",
    "[S1] How was the interview? [S2] Long. Three rounds, and a puzzle at the end.",
    "[S1] Let's order pizza tonight. [S2] Again? (laughs) Fine, but I pick the toppings.",
    "[S1] Have you seen my keys? [S2] They were on the table an hour ago.",
    "[S1] The garden looks wonderful this spring. [S2] The tulips came up all at once.",
    "[S1] Remind me to call my sister tomorrow. [S2] I will, right after breakfast.",
    "[S1] This coffee is far too strong. [S2] That's how I like it. [S1] Clearly.",
    "[S1] Do you want to go hiking on Saturday? [S2] Only if we start after nine.",
    "[S1] The printer jammed again. [S2] Turn it off and on. [S1] I did, twice.",
    "[S1] What time does the museum open? [S2] Ten, and it's free on the first Sunday.",
    "[S1] I think the cat is plotting something. [S2] She always is. (laughs)",
]


def script_for(i: int) -> str:
    line = SCRIPTS[i % len(SCRIPTS)]
    return line if i < len(SCRIPTS) else f"{line} [S1] Take {i}."
