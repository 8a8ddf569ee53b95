"""The registry's tables: contributors, licences, artifacts, models, data sets, lineage,
contribution terms, tenants, API keys and upstream providers (SQLAlchemy 2 declarative)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


CONTRIBUTOR_KINDS = ("person", "organisation", "infrastructure", "platform")
MODEL_KINDS = ("base", "adapter", "finetune")
TASKS = ("embedding", "classification", "causal-lm")
TERM_KINDS = ("per_1k_input_tokens", "per_1k_output_tokens", "per_request", "per_compute_second")
DECLARED_USES = ("commercial", "non-commercial")
SCOPES_FIXED = ("inference", "admin")


class Contributor(Base):
    __tablename__ = "contributors"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    email: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (CheckConstraint(f"kind IN {CONTRIBUTOR_KINDS}", name="ck_contributor_kind"),)


class Licence(Base):
    __tablename__ = "licences"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str | None] = mapped_column(String(300))
    commercial_use: Mapped[bool] = mapped_column(Boolean)
    attribution_required: Mapped[bool] = mapped_column(Boolean, default=False)
    attribution_text: Mapped[str | None] = mapped_column(Text)
    restrictions: Mapped[list[str]] = mapped_column(default=list)
    user_limit: Mapped[int | None] = mapped_column(BigInteger)
    share_alike: Mapped[bool] = mapped_column(Boolean, default=False)
    custom: Mapped[bool] = mapped_column(Boolean, default=False)


class Artifact(Base):
    __tablename__ = "artifacts"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    declared_use: Mapped[str] = mapped_column(String(20), default="commercial")
    monthly_active_users: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Rate limits per minute (api/ratelimit.py): None = the server's default, 0 = unlimited.
    requests_per_minute: Mapped[int | None] = mapped_column(BigInteger, default=None)
    tokens_per_minute: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # True: the tenant's data must not leave the platform's infrastructure, so provider models
    # whose upstream runs elsewhere are refused before a byte is sent (providers/policy.py).
    data_stays_on_platform: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    __table_args__ = (CheckConstraint(f"declared_use IN {DECLARED_USES}", name="ck_tenant_use"),)


class Model(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    task: Mapped[str] = mapped_column(String(20))
    base_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    artifact_digest: Mapped[str] = mapped_column(ForeignKey("artifacts.digest"))
    licence_id: Mapped[str] = mapped_column(ForeignKey("licences.id"))
    author_id: Mapped[str] = mapped_column(ForeignKey("contributors.id"))
    labels: Mapped[list[str] | None] = mapped_column(JSON)
    card: Mapped[dict[str, Any]] = mapped_column(default=dict)
    visibility: Mapped[str] = mapped_column(String(10), default="public")
    owner_tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    base: Mapped[Model | None] = relationship(remote_side=[id], lazy="joined", join_depth=1)
    dataset_links: Mapped[list[ModelDataset]] = relationship(
        back_populates="model", cascade="all, delete-orphan", lazy="selectin"
    )
    __table_args__ = (
        CheckConstraint(f"kind IN {MODEL_KINDS}", name="ck_model_kind"),
        CheckConstraint(f"task IN {TASKS}", name="ck_model_task"),
        CheckConstraint("visibility IN ('public', 'private')", name="ck_model_visibility"),
        CheckConstraint("kind = 'base' OR base_id IS NOT NULL", name="ck_model_derived_has_base"),
    )


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    artifact_digest: Mapped[str] = mapped_column(ForeignKey("artifacts.digest"))
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # unique per owner, not overall
    example_count: Mapped[int] = mapped_column(Integer)
    licence_id: Mapped[str] = mapped_column(ForeignKey("licences.id"))
    provider_id: Mapped[str] = mapped_column(ForeignKey("contributors.id"))
    # The tenant whose upload it is, visible to it alone; None: an operator's, public.
    owner_tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelDataset(Base):
    """Lineage edge: a fine-tuned model was trained on a data set, with a weight."""

    __tablename__ = "model_datasets"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    weight: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[Model] = relationship(back_populates="dataset_links")
    dataset: Mapped[Dataset] = relationship(lazy="joined")
    __table_args__ = (CheckConstraint("weight > 0", name="ck_lineage_weight_positive"),)


class ContributionTerm(Base):
    """What a contributor earns each time an artifact (model or data set) is used."""

    __tablename__ = "contribution_terms"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_type: Mapped[str] = mapped_column(String(10))
    subject_id: Mapped[int] = mapped_column(Integer)
    contributor_id: Mapped[str] = mapped_column(ForeignKey("contributors.id"))
    kind: Mapped[str] = mapped_column(String(30))
    amount_nanos: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (
        UniqueConstraint("subject_type", "subject_id", "contributor_id", "kind", name="uq_term"),
        CheckConstraint("subject_type IN ('model', 'dataset')", name="ck_term_subject"),
        CheckConstraint(f"kind IN {TERM_KINDS}", name="ck_term_kind"),
        CheckConstraint("amount_nanos >= 0", name="ck_term_amount"),
    )


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(100), default="")
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Acceptance(Base):
    """A tenant's explicit acceptance of a licence's flow-down use restrictions, kept for audit:
    withdrawing sets `withdrawn_at`; accepting again adds a new row."""

    __tablename__ = "licence_acceptances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    licence_id: Mapped[str] = mapped_column(ForeignKey("licences.id"))
    restrictions: Mapped[list[str]] = mapped_column(default=list)
    key_id: Mapped[str | None] = mapped_column(String(16))
    via: Mapped[str] = mapped_column(String(10), default="api")
    accepted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    withdrawn_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (CheckConstraint("via IN ('api', 'cli')", name="ck_acceptance_via"),)


class TenantContributor(Base):
    """A contributor identity a tenant owns, linked by an admin: the tenant's keys may name it as
    the author or data provider of what they fine-tune, and no other contributor; and only for
    such a contributor may the tenant hold a `contributor:<id>` key (its statement)."""

    __tablename__ = "tenant_contributors"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    contributor_id: Mapped[str] = mapped_column(
        ForeignKey("contributors.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Provider(Base):
    """An upstream that speaks the OpenAI API. Its secret is never stored: `api_key_env` names
    the variable (in the environment, or the operator's secrets file) read at call time."""

    __tablename__ = "providers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    base_url: Mapped[str] = mapped_column(String(500))
    api_key_env: Mapped[str | None] = mapped_column(String(128))
    # The contributor whose account is owed the upstream's list price.
    contributor_id: Mapped[str] = mapped_column(ForeignKey("contributors.id"))
    # True: the upstream runs on the platform's own infrastructure (data does not leave it).
    on_platform: Mapped[bool] = mapped_column(Boolean, default=False)
    timeout_s: Mapped[float] = mapped_column(Float, default=60.0)
    max_concurrency: Mapped[int] = mapped_column(Integer, default=64)
    max_retries: Mapped[int] = mapped_column(Integer, default=2)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (
        CheckConstraint("max_concurrency > 0", name="ck_provider_concurrency"),
        CheckConstraint("max_retries >= 0", name="ck_provider_retries"),
        CheckConstraint("timeout_s > 0", name="ck_provider_timeout"),
    )


class ProviderModel(Base):
    """One upstream model published under a local model name. The model row (kind 'base': it
    has no base and no weights of its own) carries the licence, visibility and price terms."""

    __tablename__ = "provider_models"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"), index=True)
    upstream_model: Mapped[str] = mapped_column(String(200))


class DatasetSource(Base):
    """A data set holds outputs of a model (e.g. a provider's): a model trained on it inherits
    that model's licence terms. The licence is copied, so the mark outlives the model's row."""

    __tablename__ = "dataset_sources"
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    licence_id: Mapped[str] = mapped_column(ForeignKey("licences.id"))
