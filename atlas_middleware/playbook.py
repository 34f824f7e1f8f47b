"""Learning memory: short lessons per learning key, distilled from high- and low-reward sessions,
injected into the teacher's prompts and the student's guidance, and pruned when they do not help.

Impact is measured, not assumed: every lesson keeps the mean reward of the sessions it was shown
in; the key keeps the mean reward of all its sessions. A lesson whose sessions do worse than the
key's mean after ``min_uses`` sessions is removed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from atlas_middleware.leaks import states_an_answer
from atlas_middleware.models.base import ChatMessage, ChatModel
from atlas_middleware.storage import Store

LESSON_SYSTEM = (
    "You write one short lesson (one sentence, under 30 words) that will help a student solve "
    "similar tasks next time. State the lesson only."
)


@dataclass
class Lesson:
    text: str
    source: str  # trace id of the session it was learned from
    added_ns: int
    uses: int = 0
    reward_sum: float = 0.0

    @property
    def mean(self) -> float | None:
        return self.reward_sum / self.uses if self.uses else None


@dataclass
class PlaybookState:
    lessons: list[Lesson] = field(default_factory=list)
    sessions: int = 0
    reward_sum: float = 0.0

    @property
    def mean(self) -> float | None:
        return self.reward_sum / self.sessions if self.sessions else None

    def to_json(self) -> dict[str, Any]:
        return {
            "lessons": [asdict(lesson) for lesson in self.lessons],
            "sessions": self.sessions,
            "reward_sum": self.reward_sum,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> PlaybookState:
        if not data:
            return cls()
        return cls(
            lessons=[Lesson(**lesson) for lesson in data.get("lessons", [])],
            sessions=int(data.get("sessions", 0)),
            reward_sum=float(data.get("reward_sum", 0.0)),
        )


@dataclass(frozen=True)
class PlaybookPolicy:
    high: float = 0.8  # sessions at or above this teach what worked
    low: float = 0.3  # sessions at or below this teach what to avoid
    max_lessons: int = 8
    min_uses: int = 5


class Playbook:
    """The playbook of one learning key, kept in the store's ``playbooks`` table."""

    def __init__(self, store: Store, learning_key: str, policy: PlaybookPolicy | None = None):
        self.store = store
        self.learning_key = learning_key
        self.policy = policy or PlaybookPolicy()

    def load(self) -> PlaybookState:
        return PlaybookState.from_json(self.store.get_playbook(self.learning_key))

    def lessons(self) -> list[str]:
        return [lesson.text for lesson in self.load().lessons]

    def record(self, shown: list[str], reward: float) -> list[str]:
        """Account one rewarded session that was shown ``shown``; returns lessons pruned."""
        state = self.load()
        state.sessions += 1
        state.reward_sum += reward
        for lesson in state.lessons:
            if lesson.text in shown:
                lesson.uses += 1
                lesson.reward_sum += reward
        baseline = state.mean
        pruned = [
            lesson.text
            for lesson in state.lessons
            if lesson.uses >= self.policy.min_uses
            and baseline is not None
            and lesson.mean is not None
            and lesson.mean < baseline
        ]
        state.lessons = [lesson for lesson in state.lessons if lesson.text not in pruned]
        self.store.put_playbook(self.learning_key, state.to_json())
        return pruned

    async def learn(
        self, teacher: ChatModel, *, task: str, answer: str, reward: float, trace_id: str
    ) -> str | None:
        """Distil a lesson from a clearly good or clearly bad session; None for the rest."""
        if self.policy.low < reward < self.policy.high:
            return None
        outcome = "was judged good" if reward >= self.policy.high else "was judged wrong"
        messages: list[ChatMessage] = [
            {"role": "system", "content": LESSON_SYSTEM},
            {
                "role": "user",
                "content": "Task:\n"
                + task
                + "\n\nAnswer ("
                + outcome
                + f", reward {reward:.2f}):\n"
                + answer
                + "\n\nLesson:",
            },
        ]
        result = await teacher.chat(messages, max_tokens=60)
        text = " ".join(result.text.split())[:300]
        # A lesson that states an answer is a leak like any guidance that does: shown to the
        # student on every later task, "The answer is 16." made it answer 16 (docs/learning.md).
        if not text or states_an_answer(text):
            return None
        state = self.load()
        if any(lesson.text == text for lesson in state.lessons):
            return None
        state.lessons.append(Lesson(text, trace_id, time.time_ns()))
        # Keep the newest lessons; measured ones that help stay by surviving pruning.
        state.lessons = state.lessons[-self.policy.max_lessons :]
        self.store.put_playbook(self.learning_key, state.to_json())
        return text
