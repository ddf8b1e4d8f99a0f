"""Declare the blog API schema that the revisions in versions/ build."""

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints let downgrades (and SQLite's batch mode) drop them by name on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# A plain CURRENT_TIMESTAMP renders the same DEFAULT on SQLite, PostgreSQL and MariaDB.
NOW = sa.text("CURRENT_TIMESTAMP")


class Base(DeclarativeBase):
    """Hold the metadata that env.py compares and autogenerates against."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    """Someone who can log in, write posts and vote."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(255), unique=True)
    password: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=NOW, index=True
    )
    phone_number: Mapped[str | None] = mapped_column(sa.String(50))


class Post(Base):
    """A post that belongs to the user who wrote it."""

    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(255))
    content: Mapped[str] = mapped_column(sa.Text)
    published: Mapped[bool] = mapped_column(server_default=sa.true())
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=NOW, index=True
    )
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))


class Vote(Base):
    """One user's vote on one post; deleting either removes the vote."""

    __tablename__ = "votes"

    user_id: Mapped[int] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    post_id: Mapped[int] = mapped_column(
        sa.ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True
    )


target_metadata = Base.metadata
