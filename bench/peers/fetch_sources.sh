#!/usr/bin/env bash
# Puts the peers' public sources into DIR (git-ignored; never commit them):
#   DIR/HierarchicalKV/{include,LICENSE,COMMIT}, DIR/cuCollections/{include,LICENSE,COMMIT}
#
#   bench/peers/fetch_sources.sh DIR [MIRRORS]
#
# MIRRORS: a folder of bare clones named <owner>+<repo>/repo (this workplace's /work/.mirror);
# without it the repositories are cloned from GitHub. The commits are the ones measured in
# BENCHMARKS.md.
set -euo pipefail
dir="${1:?usage: fetch_sources.sh DIR [MIRRORS]}"
mirrors="${2:-}"
mkdir -p "$dir"
fetch() {  # owner/repo name commit
  local slug=$1 name=$2 commit=$3 git_dir
  rm -rf "${dir:?}/$name" && mkdir -p "$dir/$name"
  if [ -n "$mirrors" ]; then
    git_dir="$mirrors/${slug/\//+}/repo"
  else
    git_dir="$dir/.$name.git"
    [ -d "$git_dir" ] || git clone --bare --filter=blob:none "https://github.com/$slug.git" "$git_dir"
  fi
  git --git-dir="$git_dir" archive "$commit" include LICENSE | tar -x -C "$dir/$name"
  echo "$commit" > "$dir/$name/COMMIT"
}
fetch NVIDIA-Merlin/HierarchicalKV HierarchicalKV ae24eecde0b42a90b2c83db15eba0294b5cc2928
fetch NVIDIA/cuCollections cuCollections dc0f9fc20c2a544e53099e640a681b347532391a
echo "sources in $dir"
