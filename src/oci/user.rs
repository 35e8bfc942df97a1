//! The container's user: its uid, gid and groups from the security context or the image's
//! `User`, names resolved against the image's own `/etc/passwd` and `/etc/group`.

use crate::cri;

use super::SpecError;
use crate::image::manifest::ImageConfig;

/// The largest uid or gid the kernel takes (2^32-1 is "no id").
const MAX_ID: i64 = u32::MAX as i64 - 1;

/// A uid or gid from `field`: 0 to 2^32-2.
pub fn check_id(field: &'static str, what: &str, id: i64) -> Result<i64, SpecError> {
    if (0..=MAX_ID).contains(&id) {
        Ok(id)
    } else {
        Err(SpecError::new(
            field,
            format!("{what} {id} is not a valid id (0 to {MAX_ID})"),
        ))
    }
}

/// The image's `/etc/passwd` and `/etc/group`, for user and group names.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    /// name → (uid, primary gid)
    pub users: Vec<(String, i64, i64)>,
    /// (name, gid, members)
    pub groups: Vec<(String, i64, Vec<String>)>,
}

impl UserDb {
    /// Parses the two files' contents (either may be empty).
    pub fn parse(passwd: &str, group: &str) -> UserDb {
        // An id the kernel cannot take makes its line malformed (skipped, as libc does).
        let id = |s: &str| s.parse::<i64>().ok().filter(|v| (0..=MAX_ID).contains(v));
        let users = passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((f.first()?.to_string(), id(f.get(2)?)?, id(f.get(3)?)?))
            })
            .collect();
        let groups = group
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                let members = f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                Some((f.first()?.to_string(), id(f.get(2)?)?, members))
            })
            .collect();
        UserDb { users, groups }
    }

    fn user(&self, name: &str) -> Option<(i64, i64)> {
        self.users.iter().find(|u| u.0 == name).map(|u| (u.1, u.2))
    }

    fn group(&self, name: &str) -> Option<i64> {
        self.groups.iter().find(|g| g.0 == name).map(|g| g.1)
    }

    /// The groups listing `user` as a member.
    fn groups_of(&self, user: &str) -> Vec<i64> {
        self.groups
            .iter()
            .filter(|g| g.2.iter().any(|m| m == user))
            .map(|g| g.1)
            .collect()
    }
}

/// The container's user: (uid, gid, the user's extra groups from the image's /etc/group). The
/// security context wins (run_as_user, run_as_username, run_as_group), else the image's `User`
/// (`uid`, `name`, `uid:gid`, `name:group`). Names need the image's files (`db`); without them
/// (the API's early check) a name is taken on trust and checked when the container is made.
/// Public for fuzz/.
pub fn user(
    sc: &cri::LinuxContainerSecurityContext,
    image: &ImageConfig,
    db: Option<&UserDb>,
) -> Result<(i64, i64, Vec<i64>), SpecError> {
    const FIELD: &str = "config.linux.security_context.run_as_username";
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(SpecError::new(
            "config.linux.security_context.run_as_group",
            "user group is specified without user or username",
        ));
    }
    let lookup_user = |name: &str, field: &'static str| -> Result<(i64, i64), SpecError> {
        match db {
            None => Ok((0, 0)),
            Some(db) => db.user(name).ok_or_else(|| {
                SpecError::new(
                    field,
                    format!("user {name:?} is not in the image's /etc/passwd"),
                )
            }),
        }
    };
    let lookup_group = |name: &str| -> Result<i64, SpecError> {
        if let Ok(n) = name.parse() {
            return check_id("image", "the image's group", n);
        }
        match db {
            None => Ok(0),
            Some(db) => db.group(name).ok_or_else(|| {
                SpecError::new(
                    "image",
                    format!("group {name:?} is not in the image's /etc/group"),
                )
            }),
        }
    };
    let (uid, mut gid, name) = if let Some(u) = &sc.run_as_user {
        check_id("config.linux.security_context.run_as_user", "user", u.value)?;
        // Numeric user: its primary group is the image's for it, else 0.
        let primary = db
            .and_then(|db| db.users.iter().find(|x| x.1 == u.value))
            .map(|x| x.2)
            .unwrap_or(0);
        let name = db.and_then(|db| {
            db.users
                .iter()
                .find(|x| x.1 == u.value)
                .map(|x| x.0.clone())
        });
        (u.value, primary, name)
    } else if !sc.run_as_username.is_empty() {
        let (uid, gid) = lookup_user(&sc.run_as_username, FIELD)?;
        (uid, gid, Some(sc.run_as_username.clone()))
    } else {
        let image_user = image
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .unwrap_or_default();
        let mut parts = image_user.splitn(2, ':');
        let u = parts.next().unwrap_or("");
        let g = parts.next();
        let (uid, primary, name) = if u.is_empty() {
            (0, 0, Some("root".to_string()))
        } else if let Ok(n) = u.parse::<i64>() {
            check_id("image", "the image's user", n)?;
            let known = db.and_then(|db| db.users.iter().find(|x| x.1 == n));
            (
                n,
                known.map(|x| x.2).unwrap_or(0),
                known.map(|x| x.0.clone()),
            )
        } else {
            let (uid, gid) = lookup_user(u, "image")?;
            (uid, gid, Some(u.to_string()))
        };
        let gid = match g {
            Some(g) => lookup_group(g)?,
            None => primary,
        };
        (uid, gid, name)
    };
    if let Some(g) = &sc.run_as_group {
        gid = check_id(
            "config.linux.security_context.run_as_group",
            "group",
            g.value,
        )?;
    }
    let extra = match (db, &name) {
        (Some(db), Some(n)) => db.groups_of(n),
        _ => Vec::new(),
    };
    Ok((uid, gid, extra))
}
