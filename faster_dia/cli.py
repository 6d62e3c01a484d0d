"""The ``faster-dia`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import FasterDiaError


def _add_model_options(p: argparse.ArgumentParser, *, several: bool = False) -> None:
    if several:
        p.add_argument("--model", action="append", default=None, metavar="MODEL",
                       help="Hub id or local directory; repeat to host several models (default "
                            "nari-labs/Dia-1.6B-0626)")
    else:
        p.add_argument("--model", default=None, help="Hub id or local directory (default nari-labs/Dia-1.6B-0626)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of the model")
    if several:
        p.add_argument("--codec", action="append", default=None, metavar="CODEC",
                       help="Hub id or local directory of the codec of the --model at the same position "
                            "(default: the family's codec, descript/dac_44khz or kyutai/mimi)")
    else:
        p.add_argument("--codec", default=None,
                       help="Hub id or local directory of the codec (default: descript/dac_44khz for Dia-1.6B, "
                            "kyutai/mimi for Dia2)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="compute dtype (default bfloat16 on CUDA and on CPUs with native bfloat16, float32 elsewhere)")
    p.add_argument("--quantize", default=None, choices=["int8", "int8-dynamic", "int4", "fp8"],
                   help="store the transformer's linear weights quantized: int8 (any device), int8-dynamic (CPU, "
                        "int8 activations too: the fastest on CPU), int4 (CUDA, CPU), fp8 (CUDA, compute "
                        "capability >= 8.9)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="requests decoded together (default: on CUDA what half the free GPU memory holds, up to 64; 4 elsewhere)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_const", const=False, default=None,
                   help="run decode steps eagerly on CUDA instead of replaying them as CUDA graphs")
    p.add_argument("--compile", action="store_true", default=None,
                   help="compile each decode step shape with torch.compile (fewer, fused kernels; seconds to "
                        "minutes of compiling per shape, best with --warmup; default: FASTER_DIA_COMPILE)")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="record the common decode step shapes (CUDA graphs) while loading, at most 120 s "
                        "(default: on with CUDA graphs for serve and ui; off for speak and on a CPU)")


def _add_ray_options(p) -> None:
    p.add_argument("--replicas", type=int, default=1, help="copies of the models (default 1)")
    p.add_argument("--min-replicas", type=int, default=None,
                   help="autoscale on ongoing requests per replica, down to this many (0 allowed)")
    p.add_argument("--max-replicas", type=int, default=None, help="autoscale up to this many replicas")
    p.add_argument("--gpus-per-replica", type=float, default=None,
                   help="GPUs each replica holds (default 1 with --device cuda or when this machine has CUDA, else 0)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs each replica holds (default 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faster-dia", description="Dia text-to-speech, fast.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (and tracebacks on errors)")
    sub = parser.add_subparsers(dest="command", required=True)

    speak = sub.add_parser("speak", help="turn a dialogue script into a WAV file",
                           description='Example: faster-dia speak "[S1] Did you hear? (laughs) [S2] I did." -o out.wav')
    speak.add_argument("script", nargs="?", help="the script, or - to read it from standard input")
    speak.add_argument("--input", "-i", type=Path, help="read the script from this text file")
    speak.add_argument("--output", "-o", type=Path, default=Path("out.wav"), help="WAV file to write (default out.wav)")
    _add_model_options(speak)
    speak.add_argument("--seed", type=int, default=None, help="random seed (printed when not given)")
    speak.add_argument("--temperature", type=float, default=None,
                       help="0 means greedy (default 1.2 for Dia-1.6B; for Dia2 it sets text and audio)")
    speak.add_argument("--top-p", type=float, default=None, help="nucleus sampling, Dia-1.6B (default 0.95)")
    speak.add_argument("--top-k", "--cfg-filter-top-k", dest="top_k", type=int, default=None,
                       help="Dia-1.6B: candidates kept by the guidance filter (default 45); Dia2: top-k of text and audio")
    speak.add_argument("--cfg-scale", type=float, default=None, help="guidance (default 3.0 Dia-1.6B, 2.0 Dia2)")
    speak.add_argument("--max-new-tokens", type=int, default=None,
                       help="Dia-1.6B: decoder steps (86 = 1 s); Dia2: frames (12.5 = 1 s); default: as many as fit")
    speak.add_argument("--voice", default=None,
                       help="speak [S1] in a stored voice (its name), a clip (a path; transcribed automatically) or a "
                            "built-in name such as alloy")
    speak.add_argument("--voices-dir", type=Path, default=None, help="the voice library (default: see 'voices')")
    speak.add_argument("--asr-model", default=None,
                       help="speech recognition model for clips without a transcript (a Whisper size or a CTranslate2 "
                            "directory; default $FASTER_DIA_ASR_MODEL or base.en)")
    speak.add_argument("--prompt", type=Path, default=None, help="Dia-1.6B voice prompt audio (wav, flac, mp3, ogg)")
    speak.add_argument("--prompt-text", default=None, help="transcript of the voice prompt, with speaker tags")
    dia2 = speak.add_argument_group("Dia2 options")
    dia2.add_argument("--text-temperature", type=float, default=None, help="default 0.6")
    dia2.add_argument("--text-top-k", type=int, default=None, help="default 50")
    dia2.add_argument("--audio-temperature", type=float, default=None, help="default 0.8")
    dia2.add_argument("--audio-top-k", type=int, default=None, help="default 50")
    dia2.add_argument("--cfg-filter-k", type=int, default=None, help="default 50")
    dia2.add_argument("--prefix-speaker-1", type=Path, default=None, help="voice prefix audio for [S1]")
    dia2.add_argument("--prefix-text-1", default=None, help="transcript of the [S1] prefix")
    dia2.add_argument("--prefix-speaker-2", type=Path, default=None, help="voice prefix audio for [S2]")
    dia2.add_argument("--prefix-text-2", default=None, help="transcript of the [S2] prefix")
    dia2.add_argument("--include-prefix", action="store_true", help="keep the prefix audio in the output")
    speak.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    serve = sub.add_parser("serve", help="run the OpenAI-compatible HTTP server",
                           description="Example: faster-dia serve --port 8000 --api-key SECRET")
    _add_model_options(serve, several=True)
    serve.add_argument("--default-model", default=None, metavar="NAME",
                       help="the model tts-1 and requests without a model get (an id or alias; default the first)")
    serve.add_argument("--lazy", action="store_true",
                       help="load each model on its first request instead of at start")
    serve.add_argument("--idle-unload", type=float, default=None, metavar="SECONDS",
                       help="free a model's memory after this long without requests (loaded again on the next)")
    serve.add_argument("--metrics-public", action="store_true",
                       help="answer /metrics without an API key")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on, 1-65535 (default 8000)")
    serve.add_argument("--api-key", action="append", default=[], metavar="KEY",
                       help="require 'Authorization: Bearer KEY' (repeatable; also FASTER_DIA_API_KEYS, "
                            "comma-separated)")
    serve.add_argument("--max-queue", type=int, default=None,
                       help="requests per model that may wait for a batch slot; more get 503 with Retry-After "
                            "(default 16 per batch slot, at least 64)")
    serve.add_argument("--chunk-seconds", type=float, default=None,
                       help="seconds of audio per streamed chunk (default 0.37)")
    serve.add_argument("--seed", type=int, default=None,
                       help="seed for requests that send none, so every request gets the same voice "
                            "(default: a random seed per request)")
    serve.add_argument("--voices-dir", type=Path, default=None,
                       help="the voice library (default $FASTER_DIA_VOICES_DIR or ~/.local/share/faster-dia/voices)")
    serve.add_argument("--asr-model", default=None,
                       help="speech recognition model: a Whisper size or a CTranslate2 directory (default "
                            "$FASTER_DIA_ASR_MODEL or base.en), loaded on first use")
    serve.add_argument("--allow-file-dir", type=Path, default=None, metavar="DIR",
                       help="let chat completions read file:// audio URLs under DIR (default: refuse them)")
    hosted = serve.add_argument_group("task API (/v1/tasks) and /v1/dia")
    hosted.add_argument("--data-dir", type=Path, default=None,
                        help="job store and result files (default $FASTER_DIA_DATA_DIR or "
                             "~/.local/share/faster-dia/server)")
    hosted.add_argument("--database", default=None, metavar="URL",
                        help="job store database: postgresql://user:password@host/db (shared by replicas, which "
                             "must share --data-dir too) or sqlite:///path (default $FASTER_DIA_DATABASE or "
                             "tasks.sqlite3 in the data directory)")
    hosted.add_argument("--allow-outbound", action="append", default=[], metavar="CIDR",
                        help="let webhooks, uploads and audio URLs reach this non-public network (repeatable)")
    hosted.add_argument("--price-per-audio-second", type=float, default=0.0, metavar="PRICE",
                        help="cost of a second of audio, for includeCost (default 0)")
    hosted.add_argument("--price-per-gpu-second", type=float, default=0.0, metavar="PRICE",
                        help="cost of a second of decoding, for includeCost (default 0)")
    hosted.add_argument("--quota", type=int, default=None, metavar="N",
                        help="/v1/dia requests per API key and day; more get 406 (default: no limit)")
    _add_ray_options(serve.add_argument_group("several replicas on Ray Serve (the 'ray' extra; docs/deployment.md)"))
    serve.add_argument("--ray", action="store_true",
                       help="serve through Ray Serve with --replicas copies of the models, each with its own engine")
    serve.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="join this Ray cluster (e.g. ray://head:10001 or auto) instead of starting one; implies --ray")
    serve.set_defaults(handler=_serve)

    ray_config = sub.add_parser("ray-config", help="write a Ray Serve config file (serve run, KubeRay RayService)",
                                description="Example: faster-dia ray-config --model nari-labs/Dia2-2B "
                                            "--min-replicas 1 --max-replicas 4 -o serve.yaml")
    _add_model_options(ray_config, several=True)
    ray_config.add_argument("--output", "-o", type=Path, default=None, help="file to write (default: standard output)")
    for flag, kind, text in (("--default-model", str, "see 'serve'"), ("--idle-unload", float, "see 'serve'"),
                             ("--chunk-seconds", float, "see 'serve'"), ("--seed", int, "see 'serve'"),
                             ("--asr-model", str, "see 'serve'"), ("--quota", int, "see 'serve'"),
                             ("--voices-dir", str, "the voice library: a path every replica reaches (a shared volume)"),
                             ("--data-dir", str, "task files: a path every replica reaches (a shared volume)"),
                             ("--database", str, "the task store's database URL (PostgreSQL for several replicas)")):
        ray_config.add_argument(flag, type=kind, default=None, help=text)
    ray_config.add_argument("--lazy", action="store_true", help="see 'serve'")
    ray_config.add_argument("--metrics-public", action="store_true", help="see 'serve'")
    ray_config.add_argument("--host", default="0.0.0.0", help="address of Serve's HTTP proxy (default 0.0.0.0)")
    ray_config.add_argument("--port", type=int, default=8000, help="port of Serve's HTTP proxy (default 8000)")
    _add_ray_options(ray_config)

    ui = sub.add_parser("ui", help="open the web page in a browser, served on 127.0.0.1",
                        description="Example: faster-dia ui --model nari-labs/Dia2-2B (the page is also at / of "
                                    "'faster-dia serve')")
    _add_model_options(ui, several=True)
    ui.add_argument("--port", type=int, default=8000, help="port to listen on, 1-65535 (default 8000)")
    ui.add_argument("--voices-dir", type=Path, default=None, help="the voice library (default: see 'voices')")
    ui.add_argument("--asr-model", default=None, help="speech recognition model for voice clips (see 'serve')")
    ui.add_argument("--no-browser", dest="open_browser", action="store_false",
                    help="print the page's address instead of opening it")
    # The rest of what _serve reads, as 'serve' has it by default.
    ui.set_defaults(handler=_serve, host="127.0.0.1", api_key=[], default_model=None, lazy=False, idle_unload=None,
                    metrics_public=False, max_queue=None, chunk_seconds=None, seed=None)

    voices = sub.add_parser("voices", help="manage the voice library",
                            description="Example: faster-dia voices add alice alice.wav")
    voices.add_argument("--voices-dir", type=Path, default=None,
                        help="the voice library (default $FASTER_DIA_VOICES_DIR or ~/.local/share/faster-dia/voices)")
    actions = voices.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a voice from a clip of 1-20 s of speech")
    add.add_argument("name")
    add.add_argument("file", type=Path)
    add.add_argument("--transcript", default=None, help="what the clip says (default: transcribed automatically)")
    add.add_argument("--asr-model", default=None, help="speech recognition model used when no transcript is given")
    actions.add_parser("list", help="list the stored voices")
    remove = actions.add_parser("rm", help="remove a voice")
    remove.add_argument("name")
    return parser


def _read_script(args: argparse.Namespace) -> str:
    if args.input is not None:
        if args.script is not None:
            raise FasterDiaError("Give the script either as an argument or with --input, not both.")
        try:
            return args.input.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FasterDiaError(f"Cannot read {args.input}: {exc}") from exc
    if args.script is None:
        raise FasterDiaError('No script given: pass it as an argument, with --input FILE, or "-" for stdin.')
    if args.script == "-":
        return sys.stdin.read()
    return args.script


def _load_options(args: argparse.Namespace) -> dict:
    return dict(device=args.device, dtype=args.dtype, codec=args.codec, revision=args.revision,
                max_batch=args.max_batch, cuda_graphs=args.cuda_graphs, quantize=args.quantize, warmup=args.warmup,
                compile=args.compile)


def _speak(args: argparse.Namespace) -> int:
    from .errors import InvalidInputError
    from .loading import DEFAULT_MODEL, check_load_options, family_of, load, read_config
    from .script import normalize_script

    # Check everything that needs no model before spending seconds (minutes, for the real one) on loading it.
    script = normalize_script(_read_script(args))
    if args.prompt is not None and not args.prompt.exists():
        raise FasterDiaError(f"Voice prompt file not found: {args.prompt}")
    if args.prompt is not None and args.voice is not None:
        raise InvalidInputError("Give either --voice or --prompt, not both.")
    if args.prompt_text and args.prompt is None:
        raise InvalidInputError("--prompt-text was given without --prompt.")
    if not args.output.parent.is_dir():
        raise FasterDiaError(f"Cannot write {args.output}: the directory {args.output.parent} does not exist.")
    model = args.model or DEFAULT_MODEL
    check_load_options(**{k: v for k, v in _load_options(args).items()
                          if k in ("dtype", "max_batch", "cuda_graphs", "quantize", "compile")})
    config, source = read_config(model, args.revision)
    family = family_of(config, source).FAMILY
    options = _speak_options(args, family)
    front_door = _family_class(family)
    front_door.check_options({**options, "seed": args.seed, "max_new_tokens": args.max_new_tokens})

    from tqdm import tqdm

    # One script meets a handful of step shapes: recording them all first would cost more than it saves.
    tts = load(model, **{**_load_options(args), "warmup": bool(args.warmup)})
    if args.quantize is not None:
        from .models.quantize import weight_bytes

        print(f"weights quantized ({args.quantize}): {weight_bytes(tts.model) / 2**20:.0f} MiB", file=sys.stderr)
    if args.voice is not None:
        from .voices import VoiceLibrary

        tts.voices = VoiceLibrary(args.voices_dir)
        options["voice"] = args.voice
    if args.asr_model is not None:
        tts.asr = args.asr_model
    # tqdm writes ", " before a postfix itself.
    bar = None if args.no_progress else tqdm(desc="generating", unit="s audio", bar_format=(
        "{desc}: {n:.1f}s of audio [{elapsed}{postfix}]"), postfix="starting")

    def on_progress(p) -> None:
        bar.n = p.seconds_of_audio
        bar.set_postfix_str(f"{p.real_time_factor:.2f}x real time", refresh=False)
        bar.refresh()

    try:
        speech = tts.generate(script, seed=args.seed, max_new_tokens=args.max_new_tokens,
                              progress=None if bar is None else on_progress, **options)
    finally:
        if bar is not None:
            bar.close()
    try:
        speech.save(args.output)
    except OSError as exc:
        raise FasterDiaError(f"Cannot write {args.output}: {exc.strerror or exc}") from exc
    print(f"wrote {args.output} ({speech.duration:.2f} s at {speech.sample_rate} Hz), seed {speech.seed}")
    return 0


def _family_class(family: str):
    if family == "dia2":
        from .models.dia2.tts import Dia2TextToSpeech

        return Dia2TextToSpeech
    from .models.dia1.tts import Dia1TextToSpeech

    return Dia1TextToSpeech


def _speak_options(args: argparse.Namespace, family: str) -> dict:
    """The family's generation options from the command line (only those given, so defaults apply)."""
    from .errors import InvalidInputError

    options = {name: getattr(args, name) for name in ("temperature", "top_p", "top_k", "cfg_scale")
               if getattr(args, name) is not None}
    dia2_only = ("text_temperature", "text_top_k", "audio_temperature", "audio_top_k", "cfg_filter_k")
    if family == "dia2":
        if args.prompt is not None:
            raise InvalidInputError("Dia2 takes voice prefixes: use --prefix-speaker-1 and --prefix-text-1.")
        options.update({name: getattr(args, name) for name in dia2_only if getattr(args, name) is not None})
        for n in (1, 2):
            path = getattr(args, f"prefix_speaker_{n}")
            if path is not None:
                if not path.exists():
                    raise FasterDiaError(f"Voice prefix file not found: {path}")
                options[f"prefix_speaker_{n}"] = str(path)
                options[f"prefix_transcript_{n}"] = getattr(args, f"prefix_text_{n}")
        options["include_prefix"] = args.include_prefix
    else:
        given = [f"--{name.replace('_', '-')}" for name in dia2_only if getattr(args, name) is not None]
        given += [flag for flag, value in (("--prefix-speaker-1", args.prefix_speaker_1),
                                           ("--prefix-speaker-2", args.prefix_speaker_2)) if value is not None]
        if given:
            raise InvalidInputError(f"{', '.join(given)} apply to Dia2 models only.")
        options.update(audio_prompt=str(args.prompt) if args.prompt is not None else None,
                       audio_prompt_transcript=args.prompt_text)
    return options


def _serve(args: argparse.Namespace) -> int:
    import os
    import socket

    try:
        from .server import ModelSpec, serve
    except ImportError as exc:
        raise FasterDiaError(f"The server needs its extra dependencies: pip install 'faster-dia[server]' ({exc}).") \
            from exc
    from .loading import DEFAULT_MODEL, check_load_options

    # Everything that needs no model is checked first, the port included: loading takes minutes.
    if not 1 <= args.port <= 65535:
        raise FasterDiaError(f"--port must be between 1 and 65535, got {args.port}.")
    if args.max_queue is not None and args.max_queue < 0:
        raise FasterDiaError("--max-queue must be 0 or more.")
    if args.chunk_seconds is not None and not 0 < args.chunk_seconds <= 60:
        raise FasterDiaError("--chunk-seconds must be above 0 and at most 60.")
    if args.seed is not None and not 0 <= args.seed < 1 << 64:
        raise FasterDiaError("--seed must be between 0 and 2**64 - 1.")
    if args.idle_unload is not None and not args.idle_unload > 0:
        raise FasterDiaError("--idle-unload must be a positive number of seconds.")
    hosted = _hosted_options(args)
    if args.allow_file_dir is not None and not args.allow_file_dir.is_dir():
        raise FasterDiaError(f"--allow-file-dir {args.allow_file_dir} is not a directory.")
    options = {**_load_options(args), "max_queue": args.max_queue}
    check_load_options(**{k: v for k, v in options.items()
                          if k in ("dtype", "max_batch", "max_queue", "cuda_graphs", "quantize", "compile")})
    keys = [k for k in args.api_key if k.strip()]
    keys += [k.strip() for k in os.environ.get("FASTER_DIA_API_KEYS", "").split(",") if k.strip()]
    logging.getLogger("faster_dia").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    models = args.model or [DEFAULT_MODEL]
    codecs = args.codec or []
    if len(codecs) > len(models):
        raise FasterDiaError(f"{len(codecs)} --codec options for {len(models)} models: give at most one per --model.")
    codecs += [None] * (len(models) - len(codecs))
    if getattr(args, "ray", False) or getattr(args, "ray_address", None) is not None:
        return _serve_ray(args, models, codecs, options, keys, hosted)
    specs = [ModelSpec(model, {**options, "codec": codec}) for model, codec in zip(models, codecs, strict=True)]
    try:
        sock = socket.create_server((args.host, args.port), family=socket.AF_INET6 if ":" in args.host else socket.AF_INET,
                                    reuse_port=False)
    except OSError as exc:
        raise FasterDiaError(f"Cannot listen on {args.host}:{args.port}: {exc.strerror or exc}.") from exc
    if not keys and args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("faster_dia.server").warning(
            "listening on %s without API keys: anyone who can reach it can use it", args.host)
    if getattr(args, "open_browser", None) is not None:
        _open_when_ready(f"http://{args.host}:{sock.getsockname()[1]}/", args.open_browser)
    with sock:
        serve(specs, sock=sock, api_keys=keys, default_model=args.default_model, lazy=args.lazy,
              idle_unload=args.idle_unload, chunk_seconds=args.chunk_seconds, default_seed=args.seed,
              metrics_public=args.metrics_public, voices=args.voices_dir, asr_model=args.asr_model, **hosted,
              allow_file_dir=args.allow_file_dir,
              log_level="debug" if args.verbose else "info")
    return 0


def _ray_plan(args: argparse.Namespace, models: list[str], codecs: list, load_options: dict, server: dict):
    """The application args and deployment options of ``serve --ray`` and ``ray-config``, checked."""
    try:
        from .server import ray_serve
    except ImportError as exc:
        raise FasterDiaError(f"Ray Serve needs the server extra: pip install 'faster-dia[ray]' ({exc}).") from exc
    try:
        import ray.serve  # noqa: F401
    except ImportError as exc:
        raise FasterDiaError(f"Ray Serve is not installed: pip install 'faster-dia[ray]' ({exc}).") from exc
    gpus = args.gpus_per_replica
    if gpus is None:
        device = load_options.get("device")
        gpus = 1.0 if device == "cuda" or (device is None and _has_cuda()) else 0.0
    max_batch = load_options.get("max_batch") or ray_serve.DEFAULT_MAX_BATCH["gpu" if gpus > 0 else "cpu"]
    # The router's bound is made from max_batch, so the engines must use the same figure.
    load_options = {**load_options, "max_batch": max_batch}
    entries = ray_serve.model_entries(models, codecs, load_options)
    options = ray_serve.ServerOptions(models=entries, **{k: v for k, v in server.items() if v is not None})
    deployment = ray_serve.deployment_options(max_batch=max_batch, replicas=args.replicas,
                                              min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                                              gpus_per_replica=gpus, cpus_per_replica=args.cpus_per_replica)
    return ray_serve, options, deployment


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _serve_ray(args: argparse.Namespace, models: list[str], codecs: list, load_options: dict, keys: list[str],
               hosted: dict) -> int:
    import socket

    from .loading import read_config

    # As plain serve does: a missing model or an unknown layout fails now, not in every replica.
    for model in models:
        read_config(model, load_options.get("revision"))
    if args.ray_address is None:  # Serve's proxy binds the port later, in its own process: see that it is free
        try:
            socket.create_server((args.host, args.port), reuse_port=False).close()
        except OSError as exc:
            raise FasterDiaError(f"Cannot listen on {args.host}:{args.port}: {exc.strerror or exc}.") from exc
    pricing = hosted["pricing"]
    server = dict(default_model=args.default_model, lazy=args.lazy, idle_unload=args.idle_unload,
                  chunk_seconds=args.chunk_seconds, default_seed=args.seed, metrics_public=args.metrics_public,
                  voices=_path_str(args.voices_dir), asr_model=args.asr_model,
                  data_dir=_path_str(hosted["data_dir"]), database=hosted["database"],
                  allow_outbound=list(hosted["allow_outbound"]),
                  price_per_audio_second=pricing.per_audio_second, price_per_gpu_second=pricing.per_gpu_second,
                  quota=hosted["quota"], allow_file_dir=_path_str(args.allow_file_dir))
    ray_serve, options, deployment = _ray_plan(args, models, codecs, load_options, server)
    if keys:  # to the replicas through their environment, never through the application's args
        deployment["ray_actor_options"]["runtime_env"] = {"env_vars": {"FASTER_DIA_API_KEYS": ",".join(keys)}}
    ray_serve.run(options, deployment, host=args.host, port=args.port, address=getattr(args, "ray_address", None))
    return 0


def _ray_config(args: argparse.Namespace) -> int:
    import yaml  # Ray Serve's own dependency

    from .loading import DEFAULT_MODEL, check_load_options

    options = _load_options(args)
    check_load_options(**{k: v for k, v in options.items() if k in ("dtype", "max_batch", "cuda_graphs", "quantize", "compile")})
    if not 1 <= args.port <= 65535:
        raise FasterDiaError(f"--port must be between 1 and 65535, got {args.port}.")
    models = args.model or [DEFAULT_MODEL]
    codecs = args.codec or []
    if len(codecs) > len(models):
        raise FasterDiaError(f"{len(codecs)} --codec options for {len(models)} models: give at most one per --model.")
    codecs += [None] * (len(models) - len(codecs))
    server = dict(default_model=args.default_model, lazy=args.lazy, idle_unload=args.idle_unload,
                  chunk_seconds=args.chunk_seconds, default_seed=args.seed, metrics_public=args.metrics_public,
                  voices=args.voices_dir, asr_model=args.asr_model, data_dir=args.data_dir, database=args.database,
                  quota=args.quota)
    options.pop("codec")
    ray_serve, server_options, deployment = _ray_plan(args, models, codecs, options, server)
    text = yaml.safe_dump(ray_serve.config_file(server_options, deployment, host=args.host, port=args.port),
                          sort_keys=False)
    if args.output is None:
        print(text, end="")
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise FasterDiaError(f"Cannot write {args.output}: {exc.strerror or exc}") from exc
    print(f"wrote {args.output}: serve run {args.output}", file=sys.stderr)
    return 0


def _path_str(path) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _hosted_options(args: argparse.Namespace) -> dict:
    """The task API's options of ``serve``, checked (the data directory made) before any model loads."""
    import os

    from .server.hosted import DATABASE_ENV, default_data_dir
    from .server.jobstore import JobStore
    from .server.outbound import parse_networks
    from .server.pricing import Pricing

    data_dir = getattr(args, "data_dir", None)
    try:
        (data_dir or default_data_dir()).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FasterDiaError(f"Cannot use {data_dir or default_data_dir()} as the data directory: "
                             f"{exc.strerror or exc}.") from exc
    database = getattr(args, "database", None) or os.environ.get(DATABASE_ENV) or None
    if database is not None:
        JobStore(database).close()  # reachable, with its tables made: the error now, not after loading
    allow = getattr(args, "allow_outbound", [])
    parse_networks(allow)
    quota = getattr(args, "quota", None)
    if quota is not None and quota < 0:
        raise FasterDiaError("--quota must be 0 or more.")
    pricing = Pricing(per_audio_second=getattr(args, "price_per_audio_second", 0.0),
                      per_gpu_second=getattr(args, "price_per_gpu_second", 0.0))
    return {"data_dir": data_dir, "database": database, "allow_outbound": allow, "pricing": pricing, "quota": quota}


def _open_when_ready(url: str, open_browser: bool) -> None:
    """Once the server at ``url`` answers (its models load first), print the address and open it in the default
    browser."""
    import threading
    import time
    import urllib.request
    import webbrowser

    def wait_and_open() -> None:
        while True:
            try:
                with urllib.request.urlopen(url + "health", timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        print(f"faster-dia: the page is at {url}", file=sys.stderr)
        if open_browser:
            webbrowser.open(url)

    threading.Thread(target=wait_and_open, name="open-browser", daemon=True).start()


def _voices(args: argparse.Namespace) -> int:
    from .voices import VoiceLibrary

    library = VoiceLibrary(args.voices_dir)
    if args.action == "list":
        stored = library.list()
        if not stored:
            print(f"no voices in {library.path}")
        for voice in stored:
            transcript = voice.transcript or "(not transcribed yet)"
            print(f"{voice.name}\t{voice.duration:.1f} s\t{transcript[:60]}{'...' if len(transcript) > 60 else ''}")
        return 0
    if args.action == "rm":
        voice = library.remove(args.name)
        print(f"removed {voice.name}")
        return 0
    transcriber = None
    if args.transcript is None:
        transcriber = _transcriber(args.asr_model)
    voice = library.add(args.name, args.file, transcript=args.transcript, source="cli", transcriber=transcriber)
    said = f': "{voice.transcript}"' if voice.transcript else " (no transcript: speech recognition is not available)"
    print(f"added {voice.name} ({voice.duration:.1f} s) to {library.path}{said}")
    return 0


def _transcriber(model: str | None):
    """A ``(pcm, rate) -> Transcript`` function, or None (with a note) when speech recognition is unavailable."""
    from . import asr

    try:
        recognizer = asr.load(model)
    except FasterDiaError as exc:
        print(f"note: {exc.message}", file=sys.stderr)
        return None
    return lambda pcm, rate: recognizer.transcribe(pcm, sample_rate=rate)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "speak":
            return _speak(args)
        if args.command in ("serve", "ui"):
            return args.handler(args)
        if args.command == "voices":
            return _voices(args)
        if args.command == "ray-config":
            return _ray_config(args)
    except FasterDiaError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never show a traceback to a user unless asked for
        if args.verbose:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with --verbose for details)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
