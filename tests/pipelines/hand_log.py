"""A hand-written KuaiSAR-format log of five users; tests work out its examples by hand.

user 1: six feed impressions (rows shuffled in the file), three search sessions, one of them at the
        same timestamp as a feed impression (3000) to pin "strictly before t".
user 2: two feed impressions at the same time (1000), item 21 shown in train and test (held out,
        so never a NIP target), item 24 missing from item_features, no user_features row.
user 3: feed only -> dropped.   user 4: search only -> dropped.   user 5: features only -> dropped.
"""

from pipelines import kuaisar

REC_HEADER = ",".join(kuaisar.REC_INTER_COLUMNS)
SRC_HEADER = ",".join(kuaisar.SRC_INTER_COLUMNS)
USER_HEADER = ",".join(kuaisar.USER_FEATURES_COLUMNS)
ITEM_HEADER = ",".join(kuaisar.ITEM_FEATURES_COLUMNS)


def rec(user, item, ts, click):
    return f"{user},{item},1000.0,2000.0,{kuaisar.beijing_time(ts)},{float(ts)},{click},0,0,0,0,0"


def src(user, session, ts, words, item, click):
    keyword = '"[' + ", ".join(str(w) for w in words) + ']"'
    return (f"{user},{session},{kuaisar.beijing_time(ts)},{ts},{keyword},USER_INPUT,{item},"
            f"{click},VIDEO")


def item(item_id, author, cat, sub):
    return (f'{item_id},"[1, 2]",{author},NORMAL,2023-04-22,LongImport,{cat},c{cat},c{cat},'
            f"{sub},s{sub},s{sub},0,e,e,0,e,e")


REC_ROWS = [
    rec(1, 14, 4000, 1), rec(1, 11, 1000, 1), rec(1, 16, 6000, 1), rec(1, 12, 2000, 0),
    rec(1, 15, 5000, 0), rec(1, 13, 3000, 1),
    rec(2, 21, 3000, 0), rec(2, 21, 1000, 1), rec(2, 11, 1000, 0), rec(2, 24, 2000, 1),
    rec(2, 21, 2200, 1), rec(2, 22, 2500, 1),
    rec(3, 31, 1000, 1), rec(3, 32, 2000, 0),
]
SRC_ROWS = [
    src(1, 101, 1500, [7, 8], 201, 1), src(1, 101, 1500, [7, 8], 202, 0),
    src(1, 102, 3000, [9, 3, 4], 203, 0),
    src(1, 103, 4500, [7, 8], 201, 0), src(1, 103, 4500, [7, 8], 204, 1),
    src(2, 201, 500, [7, 8], 201, 1),
    src(4, 401, 100, [5], 205, 0),
]
USER_ROWS = ["1,2,3,1,5", "3,1,1,0,0", "4,1,2,2,7", "5,0,0,0,1"]
ITEM_ROWS = [
    item(11, 1, 1, 10), item(12, 1, 1, 11), item(13, 2, 2, 20), item(14, 2, 2, 21),
    item(15, 3, 1, 10), item(16, 3, 2, 20), item(21, 4, 1, 10), item(22, 4, 2, 20),
    item(201, 5, 1, 10), item(202, 5, 2, 20), item(203, 6, 3, 30), item(204, 6, 3, 30),
    item(205, 7, 3, 31),
]
FILES = {
    kuaisar.REC_INTER: [REC_HEADER, *REC_ROWS],
    kuaisar.SRC_INTER: [SRC_HEADER, *SRC_ROWS],
    kuaisar.USER_FEATURES: [USER_HEADER, *USER_ROWS],
    kuaisar.ITEM_FEATURES: [ITEM_HEADER, *ITEM_ROWS],
}


def write(directory, files=FILES, extra=None):
    """Writes the log (plus `extra` lines per file) into `directory`; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        data = "\n".join(lines + list((extra or {}).get(name, []))) + "\n"
        (directory / f"{name}.csv").write_bytes(data.encode("utf-8") if isinstance(data, str)
                                                else data)
    return directory
